// The official openai npm SDK against this server, as a Node app calls it.
// Usage: OPENAI_BASE_URL=http://host/v1 OPENAI_API_KEY=wapi_... node sdk.mjs json|verbose_json|stream FILE
// Prints what the SDK hands the app, as JSON: the transcription object, or the list of events
// of a streamed one (as the SDK parses the server-sent events).
import fs from "node:fs";
import path from "node:path";
import OpenAI from "openai";

const [mode, file] = process.argv.slice(2);
// No retries: a retried upload would be a second job, and the test should see the first answer.
const client = new OpenAI({ maxRetries: 0, timeout: 120_000 });
const request = { model: "whisper-1", file: fs.createReadStream(file) };

let result;
if (mode === "json") {
  result = await client.audio.transcriptions.create(request);
} else if (mode === "verbose_json") {
  result = await client.audio.transcriptions.create({
    ...request,
    response_format: "verbose_json",
    timestamp_granularities: ["segment"],
  });
} else if (mode === "stream") {
  result = [];
  for await (const event of await client.audio.transcriptions.create({ ...request, stream: true })) {
    result.push(event);
  }
} else {
  console.error(`usage: node ${path.basename(process.argv[1])} json|verbose_json|stream FILE`);
  process.exit(2);
}
process.stdout.write(JSON.stringify(result));
