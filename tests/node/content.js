// A Node.js client of the gateway's content surface, built only from the .proto contract:
// an image in, an image out, and a reasoning round trip (the blocks of one answer sent back
// on the next turn), unary and streamed. Prints what it saw as one JSON document on stdout.
//
//   NODE_PATH=tools/node_modules node tests/node/content.js <host:port> <caller key>
//
// Used by tests/content/test_node_content.py.
'use strict';

const zlib = require('node:zlib');
const { grpc, loadCompletionService } = require('./contract');

// Unset optional fields stay absent, so reasoning blocks go back as they came.
const CompletionService = loadCompletionService({ defaults: false });

// A 2x2 red PNG, made here (CRC-32 by table) so the example needs no image file.
function crc32(buffer) {
  let crc = ~0;
  for (const byte of buffer) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = (crc >>> 1) ^ (0xedb88320 & -(crc & 1));
  }
  return ~crc >>> 0;
}
function pngChunk(type, data) {
  const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const out = Buffer.alloc(body.length + 8);
  out.writeUInt32BE(data.length, 0);
  body.copy(out, 4);
  out.writeUInt32BE(crc32(body), body.length + 4);
  return out;
}
function redPng() {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(2, 0);
  header.writeUInt32BE(2, 4);
  header.set([8, 2, 0, 0, 0], 8);
  const row = Buffer.from([0, 255, 0, 0, 255, 0, 0]);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', header),
    pngChunk('IDAT', zlib.deflateSync(Buffer.concat([row, row]))),
    pngChunk('IEND', Buffer.alloc(0)),
  ]);
}

function metadataFor(key) {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${key}`);
  return metadata;
}

function complete(client, request, metadata) {
  return new Promise((resolve, reject) => {
    client.Complete(request, metadata, (error, reply) => (error ? reject(error) : resolve(reply)));
  });
}

function streamComplete(client, request, metadata) {
  return new Promise((resolve, reject) => {
    const messages = [];
    const call = client.StreamComplete(request, metadata);
    call.on('data', (message) => messages.push(message));
    call.on('error', reject);
    call.on('end', () => resolve(messages));
  });
}

async function main() {
  const [address, key] = process.argv.slice(2);
  if (!address || !key) {
    process.stderr.write('usage: node content.js <host:port> <caller key>\n');
    process.exit(2);
  }
  const client = new CompletionService(address, grpc.credentials.createInsecure());
  const md = metadataFor(key);
  const out = {};

  // 1. An image in: a text part and the PNG's bytes (protobuf bytes: a Buffer).
  const picture = redPng();
  const seen = await complete(client, {
    model: 'openai/gpt-4o-mini',
    messages: [{
      role: 'ROLE_USER',
      parts: [
        { text: 'What colour is this square?' },
        { image: { inline_data: { mime_type: 'image/png', data: picture }, detail: 'IMAGE_DETAIL_LOW' } },
      ],
    }],
  }, md);
  out.image_in = { content: seen.content, sent_bytes: picture.length, prompt_tokens: seen.usage.prompt_tokens };

  // 2. An image out: ask an image model for images and text.
  const painted = await complete(client, {
    model: 'google/gemini-2.5-flash-image',
    messages: [{ role: 'ROLE_USER', content: 'A red square' }],
    output_modalities: ['MODALITY_IMAGE', 'MODALITY_TEXT'],
  }, md);
  const image = painted.images[0].inline_data;
  out.image_out = {
    mime_type: image.mime_type,
    png_signature: image.data.subarray(0, 8).toString('hex'),
    bytes: image.data.length,
    image_tokens: painted.usage.completion_image_tokens,
  };

  // 3. A reasoning round trip: the answer's blocks (signed by the model) go back unchanged.
  const question = { role: 'ROLE_USER', content: 'What is 2 + 2?' };
  const reasoning = { effort: 'REASONING_EFFORT_HIGH' };
  const first = await complete(client, {
    model: 'anthropic/claude-sonnet-4.5', messages: [question], reasoning,
  }, md);
  const followUp = (details) => [
    question,
    { role: 'ROLE_ASSISTANT', content: first.content, reasoning_details: details },
    { role: 'ROLE_USER', content: 'And times 3?' },
  ];
  const second = await complete(client, {
    model: 'anthropic/claude-sonnet-4.5', messages: followUp(first.reasoning_details), reasoning,
  }, md);
  out.reasoning = {
    reasoning: first.reasoning,
    details: first.reasoning_details.map((d) => ({
      type: d.type, format: d.format, has_signature: Boolean(d.signature), text: d.text,
    })),
    second_content: second.content,
  };

  // ... and streamed: pieces as they come, the merged blocks in the end message.
  const messages = await streamComplete(client, {
    model: 'anthropic/claude-sonnet-4.5', messages: [question], reasoning,
  }, md);
  const end = messages.find((m) => m.event === 'end').end;
  const again = await complete(client, {
    model: 'anthropic/claude-sonnet-4.5', messages: followUp(end.reasoning_details), reasoning,
  }, md);
  out.stream = {
    pieces: messages.filter((m) => m.delta).reduce((n, m) => n + (m.delta.reasoning_details || []).length, 0),
    merged_equals_unary: JSON.stringify(end.reasoning_details) === JSON.stringify(first.reasoning_details),
    reasoning: messages.filter((m) => m.delta).map((m) => m.delta.reasoning || '').join(''),
    again_content: again.content,
  };

  client.close();
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
