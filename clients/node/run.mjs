#!/usr/bin/env node
// Runs an ONNX model (an onnxplain-exported explainer, or any other) with onnxruntime-node
// on the CPU, with no Python and no onnxplain.
//
//   node run.mjs model.onnx inputs.json outputs.json
//
// Tensor file format (inputs and outputs alike): one JSON object, tensor name ->
//   {"type": "float32", "dims": [2, 1, 8, 8], "data": "<base64 of the little-endian bytes>"}
// type is one of the keys of TYPES below; string tensors give "data" as a JSON list.
// Inputs left out of inputs.json keep their defaults (an exported explainer's `target`
// defaults to -1: explain the predicted class). onnxruntime-node cannot override such a
// default, so feeding one is an error. Every output of the model is written.
import { readFileSync, writeFileSync } from 'node:fs';
import { endianness } from 'node:os';
import ort from 'onnxruntime-node';

const TYPES = {
  float32: Float32Array, float64: Float64Array, float16: Uint16Array,
  int8: Int8Array, uint8: Uint8Array, int16: Int16Array, uint16: Uint16Array,
  int32: Int32Array, uint32: Uint32Array, int64: BigInt64Array, uint64: BigUint64Array,
  bool: Uint8Array,
};

function decode(name, { type, dims, data }) {
  if (type === 'string') return new ort.Tensor('string', data, dims);
  const Array_ = TYPES[type];
  if (!Array_) throw new Error(`input '${name}': unsupported type '${type}'`);
  const bytes = Buffer.from(data, 'base64');
  if (bytes.length % Array_.BYTES_PER_ELEMENT) {
    throw new Error(`input '${name}': ${bytes.length} bytes is no whole number of ${type}`);
  }
  // Copy into a fresh, aligned buffer (a decoded Buffer may sit at any offset of a pool).
  const aligned = new Uint8Array(bytes.length);
  aligned.set(bytes);
  return new ort.Tensor(type, new Array_(aligned.buffer), dims);
}

function encode(tensor) {
  const dims = Array.from(tensor.dims, Number);
  if (tensor.type === 'string') return { type: 'string', dims, data: Array.from(tensor.data) };
  const { buffer, byteOffset, byteLength } = tensor.data;
  return { type: tensor.type, dims,
           data: Buffer.from(buffer, byteOffset, byteLength).toString('base64') };
}

async function main([modelPath, inputsPath, outputsPath]) {
  if (!outputsPath) {
    console.error('usage: node run.mjs model.onnx inputs.json outputs.json');
    process.exit(2);
  }
  if (endianness() !== 'LE') throw new Error('tensor files hold little-endian bytes');
  // Severity 3 (errors only): an exported explainer's optional `target` is an initializer
  // that is also a graph input, which ONNX Runtime would warn about on every load.
  const session = await ort.InferenceSession.create(modelPath,
    { executionProviders: ['cpu'], logSeverityLevel: 3 });
  const feeds = {};
  for (const [name, spec] of Object.entries(JSON.parse(readFileSync(inputsPath, 'utf8')))) {
    // onnxruntime-node silently drops a feed outside session.inputNames, and those leave out
    // every input that has an initializer (a default): refuse rather than ignore it.
    if (!session.inputNames.includes(name)) {
      throw new Error(`onnxruntime-node cannot feed '${name}': not one of the session's inputs `
        + `(${session.inputNames.join(', ')}); an input with a default value (an initializer) `
        + 'cannot be overridden from Node.js');
    }
    feeds[name] = decode(name, spec);
  }
  const results = await session.run(feeds);
  const written = {};
  for (const name of session.outputNames) written[name] = encode(results[name]);
  writeFileSync(outputsPath, JSON.stringify(written));
}

main(process.argv.slice(2)).catch((err) => {
  console.error(err?.stack ?? String(err));
  process.exit(1);
});
