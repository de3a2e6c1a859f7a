/**
 * The server's half: envpin's REST endpoints under /envpin/api/ (envpin_provisioner/lab/handlers.py).
 * Requests go through ServerConnection, which adds the token and the XSRF cookie like every Jupyter API call.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** The state of one %use_image request, as the kernel's move server tells it. */
export interface IStep {
  image: string;
  phase: string;
  message: string;
  fraction: number | null;
  started: number;
  ended: number | null;
  serial: number;
}

/** A move asked for from this page, and how it ended. */
export interface IUiMove {
  image: string;
  restart: boolean;
  pull: boolean;
  state: 'running' | 'done' | 'refused' | 'error';
  message: string;
}

/** What envpin knows of one kernel; `envpin: false` for a kernel envpin does not run. */
export interface IKernelReport {
  kernel_id: string;
  envpin: boolean;
  ready?: boolean;
  image?: string;
  reference?: string;
  image_id?: string;
  local_id?: string;
  short_id?: string;
  source?: string;
  pinned?: boolean;
  notes?: string[];
  python?: string | null;
  pickler?: string | null;
  pooled?: boolean;
  container?: string | null;
  movable?: boolean;
  activity?: IStep | null;
  last?: IStep | null;
  ui_move?: IUiMove | null;
}

export interface IImage {
  reference: string;
  image_id: string;
  short_id: string;
  size: number;
  created: string;
}

export interface IImages {
  images: IImage[];
  allowed_images: string[];
  truncated: boolean;
  current: string | null;
  pinned: boolean;
}

/** A refusal or failure of the server, with its one-paragraph message. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

async function request<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'envpin', 'api', path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  const text = await response.text();
  let data: any = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = (data && (data.message || data.reason)) || `${response.status} ${response.statusText}`;
    throw new ApiError(String(message), response.status);
  }
  return data as T;
}

export function kernelReport(kernelId: string): Promise<IKernelReport> {
  return request<IKernelReport>(`kernels/${encodeURIComponent(kernelId)}`);
}

export function choosableImages(kernelId: string): Promise<IImages> {
  return request<IImages>(`kernels/${encodeURIComponent(kernelId)}/images`);
}

export function move(kernelId: string, image: string, restart: boolean, pull: boolean): Promise<{ ui_move: IUiMove }> {
  return request(`kernels/${encodeURIComponent(kernelId)}/move`, {
    method: 'POST',
    body: JSON.stringify({ image, restart, pull })
  });
}
