// The frontend's legacy module shim /scripts/api.js (src/scripts/api.ts): the API client instance.
import type { ComfyApi } from '@comfyorg/comfyui-frontend-types'

export { ComfyApi }
export declare const api: ComfyApi
