// Reads one job's event stream to its final status with the `eventsource` package from npm, as a
// Node program would; prints what it saw as one JSON line. Run by test_node_eventsource.py.
import { EventSource } from "eventsource";

const [url] = process.argv.slice(2);
const steps = [];
let opens = 0;
const source = new EventSource(url);
source.addEventListener("open", () => {
  opens += 1;
});
source.addEventListener("loss", (event) => {
  const data = JSON.parse(event.data);
  if (String(data.step) !== event.lastEventId) throw new Error(`id ${event.lastEventId} for step ${data.step}`);
  steps.push(data.step);
});
source.addEventListener("status", (event) => {
  // each connection opens with the job as it stands (final already, for a finished job);
  // the stream is done at a final status once every step it counts has arrived
  const job = JSON.parse(event.data);
  if (["succeeded", "failed", "cancelled"].includes(job.status) && job.step === steps.length) {
    source.close();
    console.log(JSON.stringify({ steps, opens, status: job.status }));
  }
});
source.addEventListener("error", () => {}); // a dropped connection: it reconnects by itself
setTimeout(() => {
  console.error(`no final status after 60 s; ${steps.length} steps, ${opens} opens`);
  process.exit(1);
}, 60_000).unref();
