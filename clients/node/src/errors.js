// Typed errors for ComfyMesh calls. Every platform error is a google.rpc.Status whose first detail is a
// google.rpc.ErrorInfo with a stable UPPER_SNAKE `reason` (proto/comfymesh/common/v1/error_reason.proto): that
// reason, not the message text, is what callers should branch on. grpc-js hands the Status over undecoded, in
// the `grpc-status-details-bin` trailer; the few fields needed are read here straight off the protobuf wire
// format, rather than loading googleapis' protos a second time just to decode three messages.

import grpc from '@grpc/grpc-js';

const ERROR_INFO_TYPE = 'type.googleapis.com/google.rpc.ErrorInfo';
const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LENGTH_DELIMITED = 2;
const WIRE_FIXED32 = 5;

/** A failed ComfyMesh call: the gRPC status code, its name, and the platform's ErrorInfo reason when present. */
export class ComfyMeshError extends Error {
  /**
   * @param {string} message
   * @param {{code: number, reason?: string, metadata?: Record<string, string>, cause?: unknown}} details
   */
  constructor(message, { code, reason = '', metadata = {}, cause }) {
    super(message, { cause });
    this.name = 'ComfyMeshError';
    /** @type {number} the gRPC status code (grpc.status) */
    this.code = code;
    /** @type {string} e.g. "UNAVAILABLE" */
    this.codeName = grpc.status[code] ?? String(code);
    /** @type {string} the ErrorInfo reason, e.g. "WORKFLOW_INVALID" ("" when the error came from elsewhere) */
    this.reason = reason;
    /** @type {Record<string, string>} the ErrorInfo metadata */
    this.metadata = metadata;
  }
}

/**
 * Splits a protobuf message into its fields (number, wire type, raw value).
 * @param {Buffer} buffer
 * @returns {Array<{field: number, value: Buffer | bigint}>}
 */
function readFields(buffer) {
  /** @type {Array<{field: number, value: Buffer | bigint}>} */
  const fields = [];
  let offset = 0;
  const varint = () => {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      if (offset >= buffer.length) throw new RangeError('truncated varint');
      const byte = buffer[offset++];
      result |= BigInt(byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return result;
      shift += 7n;
    }
  };
  while (offset < buffer.length) {
    const tag = Number(varint());
    const field = tag >>> 3;
    switch (tag & 7) {
      case WIRE_VARINT:
        fields.push({ field, value: varint() });
        break;
      case WIRE_LENGTH_DELIMITED: {
        const length = Number(varint());
        if (offset + length > buffer.length) throw new RangeError('truncated field');
        fields.push({ field, value: buffer.subarray(offset, offset + length) });
        offset += length;
        break;
      }
      case WIRE_FIXED64:
        offset += 8;
        break;
      case WIRE_FIXED32:
        offset += 4;
        break;
      default:
        throw new RangeError(`unsupported wire type ${tag & 7}`);
    }
  }
  return fields;
}

/** @param {Array<{field: number, value: Buffer | bigint}>} fields @param {number} number */
const bytesOf = (fields, number) => fields.filter((f) => f.field === number && Buffer.isBuffer(f.value))
  .map((f) => /** @type {Buffer} */ (f.value));

/**
 * The ErrorInfo of a serialized google.rpc.Status (fields: 1 code, 2 message, 3 repeated Any details).
 * @param {Buffer} statusBytes
 * @returns {{reason: string, metadata: Record<string, string>} | undefined}
 */
export function errorInfoFromStatus(statusBytes) {
  for (const any of bytesOf(readFields(statusBytes), 3)) {
    const anyFields = readFields(any); // Any: 1 type_url, 2 value
    const [typeUrl] = bytesOf(anyFields, 1);
    const [value] = bytesOf(anyFields, 2);
    if (!typeUrl || typeUrl.toString() !== ERROR_INFO_TYPE || !value) continue;
    const info = readFields(value); // ErrorInfo: 1 reason, 2 domain, 3 map<string, string> metadata
    /** @type {Record<string, string>} */
    const metadata = {};
    for (const entry of bytesOf(info, 3)) {
      const entryFields = readFields(entry);
      const [key] = bytesOf(entryFields, 1);
      const [val] = bytesOf(entryFields, 2);
      if (key) metadata[key.toString()] = val ? val.toString() : '';
    }
    const [reason] = bytesOf(info, 1);
    return { reason: reason ? reason.toString() : '', metadata };
  }
  return undefined;
}

/**
 * A grpc-js ServiceError as a ComfyMeshError, with the ErrorInfo reason when the server sent one.
 * @param {grpc.ServiceError} error
 * @returns {ComfyMeshError}
 */
export function fromServiceError(error) {
  const [details] = error.metadata?.get('grpc-status-details-bin') ?? [];
  let info;
  if (Buffer.isBuffer(details)) {
    try {
      info = errorInfoFromStatus(details);
    } catch {
      info = undefined; // a malformed trailer must not hide the status code and message
    }
  }
  const reason = info?.reason ?? '';
  const codeName = grpc.status[error.code] ?? String(error.code);
  return new ComfyMeshError(`${codeName}${reason ? ` (${reason})` : ''}: ${error.details || error.message}`,
    { code: error.code, reason, metadata: info?.metadata ?? {}, cause: error });
}
