/**
 * envpin in JupyterLab: where each notebook's kernel really runs.
 *
 * - a status bar item, "image · Python · short id" of the current notebook's kernel when envpin runs it,
 *   kept current on start, restart and move (item.ts); clicking it opens the move dialog (moves.ts);
 * - notifications for %use_image requests: a pull's progress, then its outcome; refusals with their fix;
 * - JupyterLab's own kernel name (notebook toolbar, status bar) says "Containerized Python" for kernels of
 *   envpin's kernelspecs, not the kernelspec's display name: that names the image the kernelspec starts in,
 *   which stops being true after a move or with a pin, and would then name an image the kernel left.
 *
 * The server's half is envpin_provisioner.lab.  Disable this half with `jupyter labextension disable envpin`.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ISessionContext } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { KernelSpec } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';

import { EnvpinStatus } from './item';
import { Notifier, moveDialog } from './moves';

/** What JupyterLab's chrome calls a kernel envpin runs: the image is the envpin item's to say. */
export const ENVPIN_KERNEL_LABEL = 'Containerized Python';
const PROVISIONER = 'envpin-docker';

function isEnvpinSpec(specs: KernelSpec.ISpecModels | null | undefined, name: string | undefined): boolean {
  if (!specs || !name) {
    return false;
  }
  const metadata = specs.kernelspecs[name]?.metadata as any;
  return metadata?.kernel_provisioner?.provisioner_name === PROVISIONER;
}

/**
 * Make ``context.kernelDisplayName`` (what the toolbar's kernel name and the status bar's kernel status
 * show) say ENVPIN_KERNEL_LABEL for kernels of envpin's kernelspecs.  The label depends on the kernelspec
 * only, so it is right from the first render and never needs one forced: it never names an image.
 */
function relabel(context: ISessionContext, specs: KernelSpec.IManager): void {
  let proto = Object.getPrototypeOf(context);
  let descriptor: PropertyDescriptor | undefined;
  while (proto && !(descriptor = Object.getOwnPropertyDescriptor(proto, 'kernelDisplayName'))) {
    proto = Object.getPrototypeOf(proto);
  }
  const original = descriptor?.get;
  if (!original) {
    return; // another JupyterLab: leave its name alone
  }
  Object.defineProperty(context, 'kernelDisplayName', {
    configurable: true,
    get(this: ISessionContext): string {
      const shown = original.call(this) as string;
      const pending = (this as any)._pendingKernelName as string | undefined;
      const name = pending || this.session?.kernel?.name;
      return isEnvpinSpec(specs.specs, name) ? ENVPIN_KERNEL_LABEL : shown;
    }
  });
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'envpin:plugin',
  description: 'Shows the image, Python and image id each notebook kernel runs in; moves kernels between images.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [IStatusBar],
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker, statusBar: IStatusBar | null) => {
    const specs = app.serviceManager.kernelspecs;
    const item = new EnvpinStatus((panel, report) => void moveDialog(panel, report, item, notifier));
    const notifier = new Notifier(item);
    const adopt = (panel: NotebookPanel) => {
      relabel(panel.sessionContext, specs);
      notifier.watch(panel);
    };
    tracker.forEach(adopt);
    tracker.widgetAdded.connect((_, panel) => adopt(panel));
    tracker.currentChanged.connect((_, panel) => item.follow(panel));
    item.follow(tracker.currentWidget);
    if (statusBar) {
      statusBar.registerStatusItem('envpin:status', {
        item,
        align: 'left',
        rank: 5,
        isActive: () => item.active,
        activeStateChanged: item.activeStateChanged
      });
    }
  }
};

export default plugin;
