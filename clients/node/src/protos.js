// Loads ComfyMesh's service definitions from the .proto files at run time (no generated code): every file under
// proto/comfymesh/, with googleapis (google/api/annotations.proto, google/rpc/status.proto, ...) on the include
// path. The google/protobuf well-known types come bundled with proto-loader.

import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

/** The repository this example lives in (clients/node/src/ → three levels up). */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/**
 * How messages look in JavaScript: field names as in the .proto (snake_case, like the REST JSON), 64-bit
 * integers as decimal strings (ComfyUI seeds exceed 2^53), enums by name, and `kind`-style oneofs naming the
 * field that is set.
 * @type {protoLoader.Options}
 */
const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

/**
 * Where googleapis' .proto files are: $COMFYMESH_GOOGLEAPIS_DIR, or third_party/googleapis, which `make proto`
 * vendors from the googleapis-common-protos Python package.
 * @param {NodeJS.ProcessEnv} [env]
 * @returns {string}
 */
export function googleapisDir(env = process.env) {
  const candidates = [env.COMFYMESH_GOOGLEAPIS_DIR, path.join(REPO_ROOT, 'third_party', 'googleapis')];
  for (const dir of candidates) {
    if (dir && existsSync(path.join(dir, 'google', 'api', 'annotations.proto'))) return dir;
  }
  throw new Error('googleapis protos not found: run `make proto` (vendors them into third_party/googleapis) or set '
    + 'COMFYMESH_GOOGLEAPIS_DIR to a directory holding google/api/annotations.proto');
}

/**
 * Every .proto file under `root`/comfymesh, relative to `root`, in a stable order.
 * @param {string} root
 * @returns {string[]}
 */
export function comfymeshProtoFiles(root) {
  const files = readdirSync(path.join(root, 'comfymesh'), { recursive: true, encoding: 'utf8' })
    .filter((name) => name.endsWith('.proto'))
    .map((name) => path.join('comfymesh', name).split(path.sep).join('/'))
    .sort();
  if (files.length === 0) throw new Error(`no .proto files under ${path.join(root, 'comfymesh')}`);
  return files;
}

/**
 * @typedef {object} ProtoLocations
 * @property {string} [protoRoot] the directory holding comfymesh/ (default: the repository's proto/)
 * @property {string} [googleapis] the directory holding google/api/ (default: see googleapisDir)
 */

/**
 * Loads every ComfyMesh proto and returns the gRPC package tree (`.comfymesh.workflow.v1.WorkflowService`, ...).
 * @param {ProtoLocations} [locations]
 * @returns {grpc.GrpcObject}
 */
export function loadComfyMeshPackage({ protoRoot = path.join(REPO_ROOT, 'proto'), googleapis } = {}) {
  const definition = protoLoader.loadSync(comfymeshProtoFiles(protoRoot), {
    ...LOADER_OPTIONS,
    includeDirs: [protoRoot, googleapis ?? googleapisDir()],
  });
  return grpc.loadPackageDefinition(definition);
}
