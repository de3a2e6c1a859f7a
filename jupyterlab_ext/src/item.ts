/**
 * The status bar item: "image · Python · short id" of the current notebook's kernel, when envpin runs it.
 *
 * It asks the server (GET /envpin/api/kernels/ID) when the notebook or its kernel changes, when the kernel
 * is back to idle after a start or restart, and after a move (the kernel's %use_image line says "moved" on
 * iopub; the item then asks until the server reports the new image).  Nothing is polled while nothing happens.
 */
import { ISessionContext } from '@jupyterlab/apputils';
import { NotebookPanel } from '@jupyterlab/notebook';
import { Kernel } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { IKernelReport, kernelReport } from './api';

export function describe(report: IKernelReport): string {
  return [report.image ?? '?', report.python ? `Python ${report.python}` : 'Python ?', report.short_id ?? '?'].join(
    ' · '
  );
}

function details(report: IKernelReport): string {
  const lines = [
    `envpin: this kernel runs in ${report.image}`,
    `reference: ${report.reference}`,
    `image id: ${report.image_id}`,
    `Python: ${report.python ?? 'unknown'}`,
    `pickler: ${report.pickler ?? 'unknown'}`,
    `image from: ${report.source}${report.pinned ? ' (pinned)' : ''}`,
    `start: ${report.pooled ? 'warm (pooled)' : 'cold'}`,
    `container: ${report.container ?? '-'}`
  ];
  for (const note of report.notes ?? []) {
    lines.push(`note: ${note}`);
  }
  lines.push('Click to move this kernel to another image.');
  return lines.join('\n');
}

export class EnvpinStatus extends Widget {
  constructor(private readonly onClick: (panel: NotebookPanel, report: IKernelReport) => void) {
    super();
    this.addClass('jp-envpin-status');
    this.node.setAttribute('role', 'button');
    this.node.tabIndex = 0;
    this.node.addEventListener('click', () => this.clicked());
    this.node.addEventListener('keydown', event => {
      if (event.key === 'Enter' || event.key === ' ') {
        this.clicked();
      }
    });
  }

  /** The last report of the current notebook's kernel (null: none, or not envpin's). */
  get report(): IKernelReport | null {
    return this._report;
  }

  /** The notebook followed (the current one). */
  get parentPanel(): NotebookPanel | null {
    return this._panel;
  }

  get active(): boolean {
    return this._report !== null && this._report.envpin;
  }

  get activeStateChanged(): ISignal<this, void> {
    return this._activeStateChanged;
  }

  /** Emitted with every new report of the current kernel. */
  get reported(): ISignal<this, IKernelReport | null> {
    return this._reported;
  }

  /** Follow ``panel`` (the current notebook), or nothing. */
  follow(panel: NotebookPanel | null): void {
    if (this._panel === panel) {
      return;
    }
    if (this._panel) {
      const ctx = this._panel.sessionContext;
      ctx.kernelChanged.disconnect(this.onKernelChanged, this);
      ctx.statusChanged.disconnect(this.onStatus, this);
    }
    this._panel = panel;
    this._lastStatus = 'unknown';
    if (panel) {
      panel.sessionContext.kernelChanged.connect(this.onKernelChanged, this);
      panel.sessionContext.statusChanged.connect(this.onStatus, this);
    }
    this.render(null);
    void this.refresh();
  }

  /** Ask the server again; ``until``: keep asking (every 0.5 s, 60 s at most) until it holds for the report. */
  async refresh(until?: (report: IKernelReport) => boolean): Promise<void> {
    const serial = ++this._serial;
    for (let attempt = 0; attempt < (until ? 120 : 1); attempt++) {
      const kernel = this._panel?.sessionContext.session?.kernel;
      if (!kernel) {
        this.render(null);
        return;
      }
      let report: IKernelReport | null = null;
      try {
        report = await kernelReport(kernel.id);
      } catch {
        report = null; // a kernel shut down meanwhile, a server without envpin's endpoints: nothing to show
      }
      if (serial !== this._serial) {
        return; // a newer refresh took over
      }
      this.render(report);
      if (!until || !report || !report.envpin || until(report)) {
        return;
      }
      await new Promise(resolve => setTimeout(resolve, 500));
    }
  }

  private onKernelChanged(_: ISessionContext, change: { newValue: Kernel.IKernelConnection | null }): void {
    this.render(null);
    if (change.newValue) {
      void this.refresh();
    }
  }

  private onStatus(_: ISessionContext, status: Kernel.Status): void {
    const before = this._lastStatus;
    this._lastStatus = status;
    if (status === 'idle' && before !== 'busy' && before !== 'idle') {
      void this.refresh(); // started, restarted or reconnected
    } else if (status === 'restarting' || status === 'autorestarting') {
      this.node.textContent = 'envpin: restarting ...';
    }
  }

  private clicked(): void {
    if (this._panel && this._report && this._report.envpin) {
      this.onClick(this._panel, this._report);
    }
  }

  private render(report: IKernelReport | null): void {
    const wasActive = this.active;
    this._report = report;
    if (report && report.envpin && report.ready) {
      let text = describe(report);
      const step = report.activity;
      if (step) {
        const pct = step.fraction !== null ? ` ${Math.round(step.fraction * 100)}%` : '';
        text += ` → ${step.image}: ${step.phase}${pct}`;
      }
      this.node.textContent = text;
      this.node.title = details(report);
    } else if (report && report.envpin) {
      this.node.textContent = 'envpin: starting ...';
      this.node.title = 'envpin is starting this kernel';
    }
    if (wasActive !== this.active) {
      this._activeStateChanged.emit();
    }
    this._reported.emit(report);
  }

  private _panel: NotebookPanel | null = null;
  private _report: IKernelReport | null = null;
  private _serial = 0;
  private _lastStatus: Kernel.Status = 'unknown';
  private _activeStateChanged = new Signal<this, void>(this);
  private _reported = new Signal<this, IKernelReport | null>(this);
}
