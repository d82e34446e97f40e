// Names for the frontend types that web/js's JSDoc uses (ComfyTypes.X). The package exports the app, the API
// client and the extension interface; the graph types are reached through them.
import type * as Frontend from '@comfyorg/comfyui-frontend-types'

declare global {
  namespace ComfyTypes {
    type ComfyApp = Frontend.ComfyApp
    type ComfyApi = Frontend.ComfyApi
    type ComfyExtension = Frontend.ComfyExtension
    type LGraph = Frontend.ComfyApp['graph']
    type LGraphNode = LGraph['nodes'][number]
    type IBaseWidget = NonNullable<LGraphNode['widgets']>[number]
    // addDOMWidget is added to LGraphNode by the frontend (src/scripts/domWidget.ts, a module augmentation that the
    // published types do not carry): typed here as the frontend defines it, optional as web/js treats it
    type DOMWidget = Frontend.DOMWidget<HTMLElement, any>
    type DOMWidgetHost = LGraphNode & {
      addDOMWidget?: (name: string, type: string, element: HTMLElement, options?: Frontend.DOMWidgetOptions<any>) => DOMWidget
    }
  }
}
