/**
 * Pulls during a kernel start, as notifications: the kernel does not exist until its image is on the
 * engine, so neither the status item nor a cell can say anything meanwhile; JupyterLab shows "Starting".
 * While a notebook of this page waits for a kernel (starting or restarting), the page asks the server
 * (GET /envpin/api/pulls, once a second) and shows each pull with its bar, replaced by its outcome.
 * Nothing is asked while no notebook waits.
 */
import { ISessionContext, Notification } from '@jupyterlab/apputils';
import { NotebookPanel } from '@jupyterlab/notebook';

import { IStartPull, clip, startPulls } from './api';
import { withBar } from './moves';

/** The states of a notebook's session in which it waits for a kernel. */
const WAITING = new Set(['initializing', 'starting', 'restarting', 'autorestarting']);
/** Seconds one wait is watched at most (a pull of many gigabytes is shown that long). */
const MAX_POLLS = 1800;

export class StartPulls {
  watch(panel: NotebookPanel): void {
    const ctx = panel.sessionContext;
    this._contexts.add(ctx);
    ctx.statusChanged.connect(this.onChange, this);
    ctx.kernelChanged.connect(this.onChange, this);
    panel.disposed.connect(() => this._contexts.delete(ctx));
    this.kick(); // a new notebook: its session's start may not show in its status yet
  }

  /** A status changed: ask only when a notebook now waits for a kernel (not on every cell's busy/idle). */
  private onChange(): void {
    if (this.waiting()) {
      this.kick();
    }
  }

  private waiting(): boolean {
    for (const ctx of this._contexts) {
      if (!ctx.isDisposed && WAITING.has(ctx.kernelDisplayStatus)) {
        return true;
      }
    }
    return false;
  }

  /** Start asking, unless already asking. */
  private kick(): void {
    if (!this._polling) {
      this._polling = true;
      void this.poll().finally(() => (this._polling = false));
    }
  }

  private async poll(): Promise<void> {
    // A session's POST may not have changed its status yet when a panel is added: look a few times first.
    for (let n = 0, idle = 0; n < MAX_POLLS && idle < 3; n++) {
      idle = this.waiting() ? 0 : idle + 1;
      try {
        this.show((await startPulls()).pulls.slice(0, 16));
      } catch {
        return; // a server without envpin's endpoints: nothing to show
      }
      await new Promise(resolve => setTimeout(resolve, 1000));
    }
  }

  private show(pulls: IStartPull[]): void {
    for (const pull of pulls) {
      const key = Number(pull.serial);
      const known = this._notes.get(key);
      const message = clip(pull.message, 500);
      if (pull.state === 'pulling' && message) {
        const fraction = typeof pull.fraction === 'number' && Number.isFinite(pull.fraction) ? pull.fraction : 0;
        const progress = Math.min(Math.max(fraction, 0), 1);
        const text = withBar(progress, message);
        if (known) {
          Notification.update({ id: known, message: text, type: 'in-progress', progress, autoClose: false });
        } else if (this._notes.size < 8) {
          this._notes.set(key, Notification.emit(text, 'in-progress', { progress, autoClose: false }));
        }
      } else if (known && pull.state !== 'pulling') {
        this._notes.delete(key);
        Notification.dismiss(known);
        if (pull.state === 'done') {
          const image = clip(pull.image, 300) || 'the image';
          Notification.success(`envpin: pulled ${image}; the kernel starts in it`, { autoClose: 8000 });
        } // failed: JupyterLab's "Error Starting Kernel" dialog says why
      }
    }
  }

  private _contexts = new Set<ISessionContext>();
  private _notes = new Map<number, string>();
  private _polling = false;
}
