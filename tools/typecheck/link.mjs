// served/extensions/ComfyUI-DPIR -> the pack's web/ folder (where the server mounts it), made before tsc runs.
import { mkdirSync, rmSync, symlinkSync } from 'node:fs'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const link = join(here, 'served', 'extensions', 'ComfyUI-DPIR')
mkdirSync(dirname(link), { recursive: true })
rmSync(link, { force: true, recursive: false })
symlinkSync(relative(dirname(link), join(here, '..', '..', 'web')), link, 'dir')
