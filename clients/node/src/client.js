// A small ComfyMesh client over gRPC: submit a ComfyUI workflow_api.json, watch its progress (resuming after a
// dropped stream without losing or repeating events), read the execution. It talks to the Envoy gateway (REST
// and gRPC share one port) or straight to the control plane, with an API key as `authorization` metadata.

import grpc from '@grpc/grpc-js';
import { ComfyMeshError, fromServiceError } from './errors.js';
import { loadComfyMeshPackage } from './protos.js';

export { ComfyMeshError } from './errors.js';

/** Event kinds after which an execution's stream ends (`event.kind` names the oneof field that is set). */
export const TERMINAL_KINDS = new Set(['succeeded', 'failed', 'cancelled']);
/** Codes after which a watch is worth reconnecting (the server, the gateway or the network went away). */
const RECONNECT_CODES = new Set([grpc.status.UNAVAILABLE, grpc.status.INTERNAL, grpc.status.UNKNOWN,
  grpc.status.DEADLINE_EXCEEDED]);
const UNARY_TIMEOUT_MS = 30_000;

/**
 * @typedef {object} ClientOptions
 * @property {string} address host:port of the gateway or control plane, e.g. "127.0.0.1:8080"
 * @property {string} apiKey sent as `authorization: Bearer <apiKey>` on every call
 * @property {boolean} [secure] TLS (default false: plaintext, as `make run` serves)
 * @property {string} [protoRoot] the directory holding comfymesh/*.proto (default: the repository's proto/)
 * @property {string} [googleapis] the directory holding google/api/*.proto (default: see protos.js)
 */

/**
 * @typedef {object} InputFile an input for LoadImage-style nodes: its name in the graph and one source
 * @property {string} name
 * @property {Buffer} [data] the bytes, sent inline
 * @property {string} [object_key] the key UploadInput returned
 * @property {string} [url] an http(s) URL the executor fetches
 * @property {string} [content_type]
 */

/**
 * @typedef {object} SubmitOptions
 * @property {number} [priority] -100..100 (default 0)
 * @property {string} [requestId] a UUID4 that makes the submission idempotent
 * @property {Record<string, string>} [labels]
 * @property {InputFile[]} [inputs]
 */

/**
 * @typedef {object} OutputFile
 * @property {string} node_id
 * @property {string} filename
 * @property {string} subfolder
 * @property {string} content_type
 * @property {number} width
 * @property {number} height
 * @property {string} object_key
 * @property {string} url a presigned download URL
 */

/**
 * @typedef {object} ExecutionEvent the fields used here; see proto/comfymesh/common/v1/execution_event.proto
 * @property {string} event_id
 * @property {string} execution_id
 * @property {string} state e.g. "EXECUTION_STATE_RUNNING"
 * @property {string} kind which of the oneof fields below is set
 * @property {{priority: number, queue_position: string}} [queued]
 * @property {{executor_id: string}} [started]
 * @property {{node_ids: string[]}} [nodes_cached]
 * @property {{node_id: string, class_type: string}} [node_started]
 * @property {{node_id: string, value: string, max: string}} [node_progress]
 * @property {{node_id: string, class_type: string, outputs: OutputFile[]}} [node_executed]
 * @property {{error: {code: number, message: string}, next_attempt: number}} [retrying]
 * @property {{outputs: OutputFile[]}} [succeeded]
 * @property {{error: {code: number, message: string}, retryable: boolean}} [failed]
 * @property {{reason: string}} [cancelled]
 */

/**
 * @typedef {object} Execution the fields used here; see proto/comfymesh/workflow/v1/execution.proto
 * @property {string} id
 * @property {string} state
 * @property {string} queue_position
 * @property {OutputFile[]} outputs
 * @property {{code: number, message: string} | null} error
 */

/**
 * @typedef {object} WatchOptions
 * @property {string} [afterEventId] resume after this event (default: from the start)
 * @property {number} [maxReconnects] how many dropped streams to resume before giving up (default 5)
 * @property {number} [reconnectDelayMs] the first wait before reconnecting, doubled each time (default 500)
 */

export class ComfyMeshClient {
  /** @param {ClientOptions} options */
  constructor({ address, apiKey, secure = false, protoRoot, googleapis }) {
    if (!address) throw new TypeError('address is required (host:port)');
    if (!apiKey) throw new TypeError('apiKey is required');
    const comfymesh = /** @type {any} */ (loadComfyMeshPackage({ protoRoot, googleapis })).comfymesh;
    const credentials = secure ? grpc.credentials.createSsl() : grpc.credentials.createInsecure();
    /** @private */
    this.workflow = new comfymesh.workflow.v1.WorkflowService(address, credentials);
    /** @private */
    this.apiKey = apiKey;
  }

  /** @private @returns {grpc.Metadata} */
  metadata() {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${this.apiKey}`);
    return metadata;
  }

  /**
   * One unary WorkflowService call as a promise; failures become ComfyMeshErrors.
   * @private
   * @param {string} method
   * @param {object} request
   * @returns {Promise<any>}
   */
  unary(method, request) {
    return new Promise((resolve, reject) => {
      this.workflow[method](request, this.metadata(), { deadline: Date.now() + UNARY_TIMEOUT_MS },
        (/** @type {grpc.ServiceError | null} */ error, /** @type {any} */ response) => {
          if (error) reject(fromServiceError(error));
          else resolve(response);
        });
    });
  }

  /**
   * Submits a graph in ComfyUI's API format. It goes as `workflow_json`, the JSON text the server parses with exact
   * integers, so seeds above 2^53 survive (pass the file's text rather than a parsed object to keep them exact).
   * @param {string | object} workflow workflow_api.json: its text, or the parsed object
   * @param {SubmitOptions} [options]
   * @returns {Promise<Execution>} the QUEUED execution, with its id and queue position
   */
  submit(workflow, { priority = 0, requestId = '', labels = {}, inputs = [] } = {}) {
    const workflowJson = typeof workflow === 'string' ? workflow : JSON.stringify(workflow);
    return this.unary('SubmitExecution', {
      workflow_json: workflowJson, priority, request_id: requestId, labels, inputs,
    });
  }

  /**
   * @param {string} id
   * @returns {Promise<Execution>}
   */
  get(id) {
    return this.unary('GetExecution', { id });
  }

  /**
   * Follows an execution until its terminal event, calling `onEvent` once per event in order. A stream that drops
   * (the gateway restarts, the network blips) is resumed from the last event seen, so no event is lost or repeated.
   * @param {string} id
   * @param {(event: ExecutionEvent) => void} onEvent
   * @param {WatchOptions} [options]
   * @returns {Promise<ExecutionEvent>} the terminal event (succeeded, failed or cancelled)
   */
  async watch(id, onEvent, { afterEventId = '', maxReconnects = 5, reconnectDelayMs = 500 } = {}) {
    let lastEventId = afterEventId;
    for (let reconnects = 0; ; reconnects++) {
      /** @type {ExecutionEvent | undefined} */
      let terminal;
      try {
        terminal = await this.followOnce(id, lastEventId, (event) => {
          lastEventId = event.event_id;
          onEvent(event);
        });
      } catch (error) {
        const retryable = error instanceof ComfyMeshError && RECONNECT_CODES.has(error.code);
        if (!retryable || reconnects >= maxReconnects) throw error;
      }
      if (terminal) return terminal;
      if (reconnects >= maxReconnects) {
        throw new ComfyMeshError(`the watch of ${id} kept ending before its terminal event`,
          { code: grpc.status.UNAVAILABLE });
      }
      await new Promise((resolve) => { setTimeout(resolve, reconnectDelayMs * 2 ** reconnects); });
    }
  }

  /**
   * One WatchExecution stream: resolves with the terminal event, or undefined when the stream ended without it.
   * @private
   * @param {string} id
   * @param {string} afterEventId
   * @param {(event: ExecutionEvent) => void} onEvent
   * @returns {Promise<ExecutionEvent | undefined>}
   */
  followOnce(id, afterEventId, onEvent) {
    return new Promise((resolve, reject) => {
      const call = this.workflow.WatchExecution({ id, after_event_id: afterEventId }, this.metadata());
      /** @type {ExecutionEvent | undefined} */
      let terminal;
      let cancelledHere = false;
      const stop = () => {
        cancelledHere = true;
        call.cancel();
      };
      call.on('data', (/** @type {ExecutionEvent} */ event) => {
        if (terminal) return; // nothing follows the terminal event
        try {
          onEvent(event);
        } catch (error) {
          stop();
          reject(error);
          return;
        }
        if (TERMINAL_KINDS.has(event.kind)) {
          terminal = event;
          stop(); // the server ends the stream too; no need to wait for it
          resolve(terminal);
        }
      });
      call.on('error', (/** @type {grpc.ServiceError} */ error) => {
        if (!cancelledHere) reject(fromServiceError(error));
      });
      // A clean end (after every message was read) without a terminal event: the caller resumes.
      call.on('end', () => resolve(terminal));
    });
  }

  /** Closes the channel. */
  close() {
    this.workflow.close();
  }
}
