// Drives mailgate through the official Resend Node SDK (pinned in package.json), as a
// user migrating from Resend would: only the base URL and the key change. Prints one
// JSON object of what the SDK answered; tests/api/provider_sdks.rs checks it and the
// MIME Postfix delivered.
import { Resend } from "resend";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
// As a user migrating sets it: RESEND_BASE_URL and RESEND_API_KEY in the environment,
// nothing in the code (the test sets the base URL with a trailing slash: the SDK then
// asks for `//emails`, which mailgate must take as `/emails`).
env("RESEND_BASE_URL");
env("RESEND_API_KEY");
const resend = new Resend();
const run = env("MAILGATE_RUN");
const to = env("MAILGATE_TO");
const from = "Acme <no-reply@acme.test>";

const ok = ({ data, error }) => {
  if (error) throw new Error(`unexpected error: ${JSON.stringify(error)}`);
  return data;
};

const out = {};
out.one = ok(
  await resend.emails.send({
    from,
    to: [to],
    subject: `resend-node one ${run}`,
    html: "<p>Hello from <b>resend-node</b></p>",
    text: "Hello from resend-node",
    headers: { "X-Entity-Ref-ID": run },
    tags: [{ name: "category", value: "welcome" }],
    replyTo: "support@acme.test",
  }),
).id;

const batch = ok(
  await resend.batch.send([
    { from, to, subject: `resend-node batch 0 ${run}`, text: "first of the batch" },
    { from, to, subject: `resend-node batch 1 ${run}`, html: "<p>second of the batch</p>" },
  ]),
);
out.batch = batch.data.map((item) => item.id);

out.attachments = ok(
  await resend.emails.send({
    from,
    to,
    subject: `resend-node attachments ${run}`,
    html: '<p>logo: <img src="cid:logo"></p>',
    attachments: [
      { filename: "notes.txt", content: Buffer.from(`notes for ${run}\n`) },
      { filename: "logo.png", content: Buffer.from([0x89, 0x50, 0x4e, 0x47]), contentId: "logo", contentType: "image/png" },
    ],
  }),
).id;

out.template = ok(
  await resend.emails.send({
    from,
    to,
    template: { id: env("MAILGATE_TEMPLATE"), variables: { name: "Ana", run } },
  }),
).id;

const later = new Date(Date.now() + 3000).toISOString();
out.scheduled = ok(
  await resend.emails.send({ from, to, subject: `resend-node scheduled ${run}`, text: "later", scheduledAt: later }),
).id;
out.scheduled_event = ok(await resend.emails.get(out.scheduled)).last_event;

const doomed = ok(
  await resend.emails.send({ from, to, subject: `resend-node cancelled ${run}`, text: "never", scheduledAt: "in 1 hour" }),
).id;
out.cancelled = ok(await resend.emails.cancel(doomed)).id;

const retry = { from, to, subject: `resend-node idempotent ${run}`, text: "exactly once" };
const key = { idempotencyKey: `resend-node-${run}` };
out.idempotent = [ok(await resend.emails.send(retry, key)).id, ok(await resend.emails.send(retry, key)).id];

const invalid = await resend.emails.send({ from, to: "not-an-address", subject: "x", text: "x" });
out.invalid = invalid.error && { name: invalid.error.name, statusCode: invalid.error.statusCode, message: invalid.error.message };

const missing = await resend.emails.send({ from, to, text: "no subject" });
out.missing = missing.error && missing.error.name;

const fetched = ok(await resend.emails.get(out.one));
out.get = { subject: fetched.subject, html: fetched.html, text: fetched.text, to: fetched.to, tags: fetched.tags };

console.log(JSON.stringify(out));
