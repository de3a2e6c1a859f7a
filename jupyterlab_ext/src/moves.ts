/**
 * Moving a kernel from the page: the dialog, the --restart confirmation, and the notifications of
 * %use_image requests (pull progress, outcomes, refusals) whether a cell or the dialog asked.
 *
 * The kernel's %use_image line (envpin/notebook/display.py) carries its state in PROGRESS_MIME on iopub:
 * working (with a pull's fraction), then same, moved, refused or error.  A move from the dialog is the
 * same %use_image, run by the server in the kernel (POST /envpin/api/kernels/ID/move), so both paths
 * end in the same messages.
 */
import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { NotebookPanel } from '@jupyterlab/notebook';
import { KernelMessage } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

import { ApiError, IKernelReport, IUiMove, choosableImages, kernelReport, move } from './api';
import { EnvpinStatus, describe } from './item';

export const PROGRESS_MIME = 'application/vnd.envpin.progress+json';

interface IProgressState {
  state: 'working' | 'same' | 'moved' | 'refused' | 'error';
  image: string;
  message: string;
  fraction: number | null;
}

/** Show ``message`` in full in a dialog: notifications cut messages at 140 characters, refusals are longer. */
function detailsAction(title: string, message: string): Notification.IAction {
  return {
    label: 'Show all',
    caption: 'The whole message, with the fix',
    callback: () => {
      void showDialog({ title, body: message, buttons: [Dialog.okButton()] });
    }
  };
}

/**
 * A pull's message with its bar in front: "██████░░░░░░ 52% envpin: pulling X: 2 layers, 8/15 MiB".
 * JupyterLab's toasts show text (and cut it at 140 characters), not the notification's `progress`: the
 * bar is text, first, so it is always seen; `progress` is passed as well for the notification center.
 */
export function withBar(fraction: number, message: string): string {
  const cells = 12;
  const full = Math.round(fraction * cells);
  return `${'█'.repeat(full)}${'░'.repeat(cells - full)} ${Math.round(fraction * 100)}% ${message}`;
}

/** Notifications of %use_image requests, one per request line (its display id). */
export class Notifier {
  constructor(private readonly item: EnvpinStatus) {}

  /** Kernels with a move from the dialog in flight: the dialog reports those outcomes itself. */
  readonly dialogMoves = new Set<string>();

  watch(panel: NotebookPanel): void {
    panel.sessionContext.iopubMessage.connect((_, msg) => this.onIopub(panel, msg));
  }

  private onIopub(panel: NotebookPanel, msg: KernelMessage.IMessage): void {
    const type = msg.header.msg_type;
    if (type !== 'display_data' && type !== 'update_display_data') {
      return;
    }
    const content = msg.content as KernelMessage.IDisplayDataMsg['content'];
    const data = content.data?.[PROGRESS_MIME] as unknown as IProgressState | undefined;
    if (!data || typeof data !== 'object' || typeof data.state !== 'string') {
      return;
    }
    const displayId = String((content.transient as any)?.display_id ?? msg.parent_header?.['msg_id' as never] ?? '');
    const kernelId = panel.sessionContext.session?.kernel?.id ?? '';
    this.onState(panel, kernelId, displayId, data);
  }

  private onState(panel: NotebookPanel, kernelId: string, key: string, data: IProgressState): void {
    const message = String(data.message ?? '');
    const known = this._notes.get(key);
    if (data.state === 'working') {
      if (typeof data.fraction !== 'number') {
        return; // resolving: no notification until there is something to wait for (a pull)
      }
      const progress = Math.min(Math.max(data.fraction, 0), 1);
      const text = withBar(progress, message);
      if (known) {
        Notification.update({ id: known, message: text, type: 'in-progress', progress, autoClose: false });
      } else {
        this._notes.set(key, Notification.emit(text, 'in-progress', { progress, autoClose: false }));
      }
      return;
    }
    this._notes.delete(key);
    const dialog = this.dialogMoves.has(kernelId);
    if (data.state === 'moved' || data.state === 'same') {
      const before = this.item.report?.local_id;
      if (panel === this.item.parentPanel) {
        void this.item.refresh(r => data.state === 'same' || r.local_id !== before);
      }
      if (known) {
        // A new notification in its place: an updated one would keep its progress bar (update cannot drop it).
        Notification.dismiss(known);
        const done =
          data.state === 'moved' ? `envpin: pulled ${data.image}; this kernel moves into it` : `envpin: pinned to ${data.image}`;
        Notification.success(done, { autoClose: 8000 });
      }
      return;
    }
    if (dialog) {
      if (known) {
        Notification.dismiss(known);
      }
      return; // the dialog shows this outcome (and offers --restart for a refusal)
    }
    if (data.state === 'error' || known) {
      if (known) {
        Notification.dismiss(known);
      }
      Notification.error(message, {
        autoClose: false,
        actions: [detailsAction(`envpin: ${data.image}`, message)]
      });
    }
  }

  private _notes = new Map<string, string>();
}

class MoveBody extends Widget {
  constructor(report: IKernelReport) {
    super();
    this.addClass('jp-envpin-move');
    const now = document.createElement('p');
    now.textContent = `Now: ${describe(report)}${report.pinned ? ' (pinned: ' + report.image + ')' : ' (not pinned)'}`;
    this.node.appendChild(now);
    const label = document.createElement('label');
    label.textContent = 'Move this kernel to ';
    this.select = document.createElement('select');
    this.select.className = 'jp-envpin-images';
    this.select.disabled = true;
    const loading = document.createElement('option');
    loading.textContent = 'loading the images ...';
    this.select.appendChild(loading);
    label.appendChild(this.select);
    this.node.appendChild(label);
    const pullLabel = document.createElement('label');
    pullLabel.className = 'jp-envpin-pull';
    this.pull = document.createElement('input');
    this.pull.type = 'checkbox';
    pullLabel.appendChild(this.pull);
    pullLabel.appendChild(document.createTextNode(' pull it first, even if present (--pull)'));
    this.node.appendChild(pullLabel);
    this.note = document.createElement('p');
    this.note.className = 'jp-envpin-note';
    this.note.textContent =
      'The same as %use_image IMAGE in a cell: a kernel that holds state asks before it restarts (--restart).';
    this.node.appendChild(this.note);
    void this.load(report);
  }

  getValue(): { image: string; pull: boolean } {
    return { image: this.select.value, pull: this.pull.checked };
  }

  private async load(report: IKernelReport): Promise<void> {
    try {
      const listed = await choosableImages(report.kernel_id);
      this.select.textContent = '';
      for (const image of listed.images) {
        const option = document.createElement('option');
        option.value = image.reference;
        option.textContent = `${image.reference}  (${image.short_id}${image.image_id === report.local_id ? ', now' : ''})`;
        this.select.appendChild(option);
      }
      this.select.disabled = listed.images.length === 0;
      const patterns = listed.allowed_images.length ? listed.allowed_images.join(', ') : 'any image';
      this.note.textContent +=
        ` Listed: the images on the engine that allowed_images lets this kernel run (${patterns})` +
        (listed.truncated ? ', the first 500.' : '.');
    } catch (error) {
      this.select.textContent = '';
      this.note.textContent = `envpin could not list the images: ${(error as Error).message}`;
    }
  }

  readonly select: HTMLSelectElement;
  readonly pull: HTMLInputElement;
  readonly note: HTMLParagraphElement;
}

async function waitForMove(kernelId: string): Promise<IUiMove | null> {
  for (;;) {
    await new Promise(resolve => setTimeout(resolve, 500));
    const report = await kernelReport(kernelId);
    const ui = report.ui_move;
    if (!ui || ui.state !== 'running') {
      return ui ?? null;
    }
  }
}

/** The dialog the status item opens, then the move, its --restart confirmation and its outcome. */
export async function moveDialog(
  panel: NotebookPanel,
  report: IKernelReport,
  item: EnvpinStatus,
  notifier: Notifier
): Promise<void> {
  const body = new MoveBody(report);
  const result = await showDialog({
    title: 'envpin: the image this kernel runs in',
    body,
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Move' })],
    focusNodeSelector: 'select'
  });
  if (!result.button.accept || !result.value || !result.value.image) {
    return;
  }
  const { image, pull } = result.value;
  const kernelId = report.kernel_id;
  let restart = false;
  notifier.dialogMoves.add(kernelId);
  try {
    for (;;) {
      await move(kernelId, image, restart, pull);
      void item.refresh(r => !r.activity && r.ui_move?.state !== 'running');
      const outcome = await waitForMove(kernelId);
      if (!outcome || outcome.state === 'done') {
        await item.refresh(r => r.image === image || r.reference === image || r.ui_move?.state !== 'running');
        return;
      }
      if (outcome.state === 'refused' && !restart) {
        const confirm = await showDialog({
          title: `Move to ${image}?`,
          body: outcome.message,
          buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Move anyway (state is lost)' })]
        });
        if (!confirm.button.accept) {
          return;
        }
        restart = true;
        continue;
      }
      Notification.error(outcome.message, {
        autoClose: false,
        actions: [detailsAction(`envpin: ${image}`, outcome.message)]
      });
      return;
    }
  } catch (error) {
    const message = error instanceof ApiError ? error.message : String(error);
    Notification.error(`envpin: ${message}`, { autoClose: false, actions: [detailsAction('envpin', message)] });
  } finally {
    notifier.dialogMoves.delete(kernelId);
  }
}
