// The frontend's legacy module shim /scripts/app.js (src/scripts/app.ts): the app instance and its class.
import type { ComfyApp } from '@comfyorg/comfyui-frontend-types'

export { ComfyApp }
export declare const app: ComfyApp
