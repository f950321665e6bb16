/**
 * A typed client of the Tasklane gateway. The types come from `schema.d.ts`, which
 * openapi-typescript generates from the gateway's OpenAPI document (`openapi.json`); the HTTP
 * calls go through openapi-fetch. See README.md.
 */
import createClient, { type Client } from "openapi-fetch";

import type { components, paths } from "./schema.js";

export type { components, paths } from "./schema.js";

export type Schemas = components["schemas"];
/** The name of every task contract the gateway publishes. */
export type TaskName = Schemas["Accepted"]["task"];
/** The payload of task `T`, as its contract validates it. */
export type PayloadOf<T extends TaskName> = Schemas[T];
/** The result of task `T` when it succeeded. */
export type ResultOf<T extends TaskName> = `${T}.result` extends keyof Schemas
  ? Schemas[`${T}.result`]
  : never;
/** The status of a task of contract `T`: `result` has that contract's result type. */
export type StatusOf<T extends TaskName> = Extract<Schemas["TaskStatus"], { task: T }>;
export type TaskStatus = Schemas["TaskStatus"];
export type TaskState = Schemas["TaskState"];
export type Accepted = Schemas["Accepted"];
export type BatchAccepted = Schemas["BatchAccepted"];
export type Problem = Schemas["Problem"];

/** States after which a task's status no longer changes. */
export const FINAL_STATES: ReadonlySet<TaskState> = new Set<TaskState>([
  "SUCCESS",
  "FAILURE",
  "REVOKED",
  "REJECTED",
  "IGNORED",
]);

/** The gateway answered with an error: `problem` holds its RFC 9457 problem details. */
export class TasklaneError extends Error {
  readonly status: number;
  readonly problem: Problem | undefined;
  /** Seconds from `Retry-After` (429 and 503), when the gateway sent it. */
  readonly retryAfter: number | undefined;

  constructor(response: Response, problem: Problem | undefined) {
    super(
      problem
        ? `${response.status} ${problem.title}${problem.detail ? `: ${problem.detail}` : ""}`
        : `${response.status} ${response.statusText}`,
    );
    this.name = "TasklaneError";
    this.status = response.status;
    this.problem = problem;
    const retryAfter = Number.parseInt(response.headers.get("Retry-After") ?? "", 10);
    this.retryAfter = Number.isNaN(retryAfter) ? undefined : retryAfter;
  }
}

/** The task ended without a result (FAILURE, REVOKED, ...): `status` says how. */
export class TaskFailedError extends Error {
  readonly status: TaskStatus;

  constructor(status: TaskStatus) {
    const why = status.error
      ? `${status.error.type}: ${status.error.message}`
      : (status.dead_letter_reason ?? "no error recorded");
    super(`task ${status.task_id} (${status.task}) ended ${status.state}: ${why}`);
    this.name = "TaskFailedError";
    this.status = status;
  }
}

/** The task did not reach a final state within `timeoutMs`. */
export class TaskTimeoutError extends Error {
  readonly lastStatus: TaskStatus | undefined;

  constructor(taskId: string, timeoutMs: number, lastStatus: TaskStatus | undefined) {
    super(`task ${taskId} not finished after ${timeoutMs} ms (last state ${lastStatus?.state})`);
    this.name = "TaskTimeoutError";
    this.lastStatus = lastStatus;
  }
}

export interface TasklaneClientOptions {
  /** The gateway's base URL, e.g. `https://tasks.example.com`. */
  baseUrl: string;
  /** This publisher's bearer token (`tasklane gateway token`). */
  token: string;
  /** A `fetch` to use instead of the global one. */
  fetch?: typeof globalThis.fetch;
}

export interface PublishOptions {
  /** Sent as `Idempotency-Key`: a retry with the same key and body publishes nothing more. */
  idempotencyKey?: string;
  signal?: AbortSignal;
}

export interface WaitOptions<T extends TaskName> {
  /** The task's contract: the result is checked to belong to it and typed as its result. */
  task?: T;
  /** How long to poll before throwing TaskTimeoutError (default 60 000). */
  timeoutMs?: number;
  /** First delay between polls, doubled up to 1 s (default 100). */
  intervalMs?: number;
  signal?: AbortSignal;
}

export interface TasklaneClient {
  /** The openapi-fetch client itself, typed path by path. */
  readonly raw: Client<paths>;
  publish<T extends TaskName>(
    task: T,
    payload: PayloadOf<T>,
    options?: PublishOptions,
  ): Promise<Accepted>;
  publishBatch<T extends TaskName>(
    task: T,
    payloads: PayloadOf<T>[],
    options?: PublishOptions,
  ): Promise<BatchAccepted>;
  getTask(taskId: string, options?: { signal?: AbortSignal }): Promise<TaskStatus>;
  /** Polls getTask until the task is final; its result, or TaskFailedError / TaskTimeoutError. */
  waitForResult<T extends TaskName = TaskName>(
    taskId: string,
    options?: WaitOptions<T>,
  ): Promise<ResultOf<T>>;
}

// openapi-fetch types one literal path at a time. Every publish path takes its contract's payload
// and answers the same responses, so one path stands for all of them; the public signatures
// above type the payload by the task name.
type PublishPath = "/v1/tasks/notifier.email.send";
type BatchPath = "/v1/tasks/notifier.email.send/batch";

export function createTasklaneClient(options: TasklaneClientOptions): TasklaneClient {
  const raw = createClient<paths>({
    baseUrl: options.baseUrl.replace(/\/+$/, ""),
    headers: { Authorization: `Bearer ${options.token}` },
    ...(options.fetch ? { fetch: options.fetch } : {}),
  });

  function headers(publish?: PublishOptions): Record<string, string> {
    const sent: Record<string, string> = { "Content-Type": "application/json" };
    if (publish?.idempotencyKey !== undefined) sent["Idempotency-Key"] = publish.idempotencyKey;
    return sent;
  }

  function answer<D>(data: D | undefined, error: unknown, response: Response): D {
    if (response.ok && data !== undefined) return data;
    throw new TasklaneError(response, isProblem(error) ? error : undefined);
  }

  async function getTask(taskId: string, opts: { signal?: AbortSignal } = {}) {
    const { data, error, response } = await raw.GET("/v1/tasks/{task_id}", {
      params: { path: { task_id: taskId } },
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    return answer(data, error, response);
  }

  return {
    raw,

    async publish(task, payload, opts = {}) {
      const { data, error, response } = await raw.POST(`/v1/tasks/${task}` as PublishPath, {
        body: payload as PayloadOf<"notifier.email.send">,
        headers: headers(opts),
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
      return answer(data, error, response);
    },

    async publishBatch(task, payloads, opts = {}) {
      const { data, error, response } = await raw.POST(`/v1/tasks/${task}/batch` as BatchPath, {
        body: { payloads: payloads as PayloadOf<"notifier.email.send">[] },
        headers: headers(opts),
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
      return answer(data, error, response);
    },

    getTask,

    async waitForResult<T extends TaskName = TaskName>(
      taskId: string,
      opts: WaitOptions<T> = {},
    ): Promise<ResultOf<T>> {
      const timeoutMs = opts.timeoutMs ?? 60_000;
      const deadline = Date.now() + timeoutMs;
      let delay = opts.intervalMs ?? 100;
      let status: TaskStatus | undefined;
      for (;;) {
        status = await getTask(taskId, opts.signal ? { signal: opts.signal } : {});
        if (opts.task !== undefined && status.task !== opts.task) {
          throw new Error(`task ${taskId} is a ${status.task} task, not ${opts.task}`);
        }
        if (status.state === "SUCCESS") return status.result as ResultOf<T>;
        if (FINAL_STATES.has(status.state)) throw new TaskFailedError(status);
        const left = deadline - Date.now();
        if (left <= 0) throw new TaskTimeoutError(taskId, timeoutMs, status);
        await sleep(Math.min(delay, left), opts.signal);
        delay = Math.min(delay * 2, 1000);
      }
    },
  };
}

function isProblem(value: unknown): value is Problem {
  return (
    typeof value === "object" &&
    value !== null &&
    typeof (value as { type?: unknown }).type === "string" &&
    typeof (value as { status?: unknown }).status === "number"
  );
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
