#!/usr/bin/env node
// Submits a ComfyUI workflow_api.json over gRPC, prints its progress, and ends with the final state and the
// object keys of its outputs.
//
//   node clients/node/examples/submit-and-watch.js [--url HOST:PORT] [--api-key KEY] [--priority N]
//        [--input NAME=FILE ...] WORKFLOW_API_JSON
//
// --url defaults to $COMFYMESH_URL (an http:// prefix is dropped) or 127.0.0.1:8080; --api-key to
// $COMFYMESH_API_KEY, then the admin key file ${COMFYMESH_HOME:-.comfymesh}/admin.key. --input sends a file inline
// for the LoadImage-style node that names NAME. Exit status: 0 succeeded, 1 failed/cancelled/refused, 2 bad usage.

import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ComfyMeshClient, ComfyMeshError } from '../src/client.js';

const EXIT_SUCCEEDED = 0;
const EXIT_FAILED = 1;
const EXIT_USAGE = 2;

class UsageError extends Error {}

/**
 * @param {string[]} argv
 * @param {NodeJS.ProcessEnv} env
 */
function parseOptions(argv, env) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        url: { type: 'string' },
        'api-key': { type: 'string' },
        priority: { type: 'string', default: '0' },
        input: { type: 'string', multiple: true, default: [] },
      },
    });
  } catch (error) {
    throw new UsageError(/** @type {Error} */ (error).message);
  }
  const { values, positionals } = parsed;
  if (positionals.length !== 1) throw new UsageError('expected one workflow_api.json file');
  const priority = Number(values.priority);
  if (!Number.isInteger(priority)) throw new UsageError(`--priority must be an integer, not ${values.priority}`);
  const url = (values.url ?? env.COMFYMESH_URL ?? '127.0.0.1:8080').replace(/^https?:\/\//, '').replace(/\/$/, '');
  return { url, apiKey: values['api-key'] ?? defaultApiKey(env), priority, workflowPath: positionals[0],
    inputs: (values.input ?? []).map(readInput) };
}

/** @param {NodeJS.ProcessEnv} env */
function defaultApiKey(env) {
  if (env.COMFYMESH_API_KEY) return env.COMFYMESH_API_KEY;
  const keyFile = path.join(env.COMFYMESH_HOME ?? '.comfymesh', 'admin.key');
  try {
    return readFileSync(keyFile, 'utf8').trim();
  } catch {
    throw new UsageError(`no API key: pass --api-key, set COMFYMESH_API_KEY, or run where ${keyFile} exists`);
  }
}

/** @param {string} spec NAME=FILE */
function readInput(spec) {
  const at = spec.indexOf('=');
  if (at <= 0) throw new UsageError(`--input wants NAME=FILE, not ${spec}`);
  const file = spec.slice(at + 1);
  try {
    return { name: spec.slice(0, at), data: readFileSync(file) };
  } catch {
    throw new UsageError(`cannot read the input file ${file}`);
  }
}

/**
 * One line per event (heartbeats are skipped).
 * @param {import('../src/client.js').ExecutionEvent} event
 * @returns {string | undefined}
 */
function describe(event) {
  switch (event.kind) {
    case 'queued': return `queued (priority ${event.queued?.priority}, position ${event.queued?.queue_position})`;
    case 'started': return `started on ${event.started?.executor_id}`;
    case 'nodes_cached': return `cached nodes: ${event.nodes_cached?.node_ids.join(', ')}`;
    case 'node_started': return `node ${event.node_started?.node_id} ${event.node_started?.class_type} started`;
    case 'node_progress':
      return `node ${event.node_progress?.node_id} ${event.node_progress?.value}/${event.node_progress?.max}`;
    case 'node_executed': return `node ${event.node_executed?.node_id} ${event.node_executed?.class_type} done`;
    case 'retrying': return `retrying (attempt ${event.retrying?.next_attempt}): ${event.retrying?.error?.message}`;
    case 'succeeded': return `succeeded: ${event.succeeded?.outputs.length} output(s)`;
    case 'failed': return `failed: ${event.failed?.error?.message}`;
    case 'cancelled': return `cancelled: ${event.cancelled?.reason}`;
    case 'heartbeat': return undefined;
    default: return event.kind;
  }
}

/**
 * @param {string[]} argv
 * @param {NodeJS.ProcessEnv} env
 * @returns {Promise<number>} the exit status
 */
async function main(argv, env) {
  let options;
  try {
    options = parseOptions(argv, env);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`usage error: ${error.message}`);
    return EXIT_USAGE;
  }
  let workflow;
  try {
    workflow = readFileSync(options.workflowPath, 'utf8');
  } catch {
    console.error(`usage error: cannot read ${options.workflowPath}`);
    return EXIT_USAGE;
  }
  const client = new ComfyMeshClient({ address: options.url, apiKey: options.apiKey });
  try {
    const execution = await client.submit(workflow, { priority: options.priority, inputs: options.inputs });
    console.log(`submitted ${execution.id} (queue position ${execution.queue_position})`);
    await client.watch(execution.id, (event) => {
      const line = describe(event);
      if (line) console.log(`  ${line}`);
    });
    const finished = await client.get(execution.id);
    console.log(`state: ${finished.state}`);
    for (const output of finished.outputs) console.log(`output: ${output.object_key}`);
    if (finished.state !== 'EXECUTION_STATE_SUCCEEDED') {
      if (finished.error) console.error(`error: ${finished.error.message}`);
      return EXIT_FAILED;
    }
    return EXIT_SUCCEEDED;
  } catch (error) {
    if (!(error instanceof ComfyMeshError)) throw error;
    console.error(`error: ${error.message}`);
    return EXIT_FAILED;
  } finally {
    client.close();
  }
}

process.exitCode = await main(process.argv.slice(2), process.env);
