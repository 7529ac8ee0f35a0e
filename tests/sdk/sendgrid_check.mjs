// Drives mailgate through the official SendGrid Node SDK (@sendgrid/mail, pinned in
// package.json), as a user migrating from SendGrid would: only the base URL and the key
// change. Prints one JSON object of what the SDK answered; tests/api/provider_sdks.rs
// checks it and the MIME Postfix delivered.
import sgMail from "@sendgrid/mail";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
sgMail.setApiKey(env("MAILGATE_TOKEN"));
// After setApiKey, which resets the base URL to SendGrid's.
sgMail.client.setDefaultRequest("baseUrl", env("MAILGATE_URL"));
const run = env("MAILGATE_RUN");
const to = env("MAILGATE_TO");
const from = { email: "no-reply@acme.test", name: "Acme" };

const ids = ([response]) => {
  if (response.statusCode !== 202) throw new Error(`status ${response.statusCode}`);
  return response.headers["x-mailgate-message-ids"].split(",");
};

const out = {};
[out.one] = ids(
  await sgMail.send({
    from,
    to: { email: to, name: "Ana Example" },
    subject: `sendgrid-node one ${run}`,
    text: "Hello from sendgrid-node",
    html: "<p>Hello from <b>sendgrid-node</b></p>",
    headers: { "X-Entity-Ref-ID": run },
    categories: ["welcome"],
    customArgs: { user_id: "42" },
    replyTo: "support@acme.test",
  }),
);

out.batch = ids(
  await sgMail.send({
    from,
    subject: `sendgrid-node batch ${run}`,
    text: "one per personalization",
    personalizations: [
      { to: [{ email: to }], subject: `sendgrid-node batch 0 ${run}` },
      { to: [{ email: to }], subject: `sendgrid-node batch 1 ${run}`, customArgs: { n: "1" } },
    ],
  }),
);

[out.attachments] = ids(
  await sgMail.send({
    from,
    to,
    subject: `sendgrid-node attachments ${run}`,
    html: '<p>logo: <img src="cid:logo"></p>',
    attachments: [
      { content: Buffer.from(`notes for ${run}\n`).toString("base64"), filename: "notes.txt", type: "text/plain" },
      // Attachments go out unconverted: `contentId`, as a Node user writes it.
      { content: Buffer.from([0x89, 0x50, 0x4e, 0x47]).toString("base64"), filename: "logo.png", type: "image/png", disposition: "inline", contentId: "logo" },
    ],
  }),
);

[out.template] = ids(
  await sgMail.send({ from, to, templateId: env("MAILGATE_TEMPLATE"), dynamicTemplateData: { name: "Ana", run } }),
);

[out.scheduled] = ids(
  await sgMail.send({
    from,
    to,
    subject: `sendgrid-node scheduled ${run}`,
    text: "later",
    sendAt: Math.floor(Date.now() / 1000) + 3,
  }),
);

// What the SDK throws for a send mailgate refuses (null if it was accepted).
const refusal = async (mail) => {
  try {
    await sgMail.send(mail);
    return null;
  } catch (err) {
    return { class: err.constructor.name, code: err.code, body: err.response.body };
  }
};
out.unsupported = await refusal({ from, to, subject: "x", text: "x", trackingSettings: { openTracking: { enable: true } } });
out.invalid = await refusal({ from, to: "not-an-address", subject: "x", text: "x" });

const retry = { from, to, subject: `sendgrid-node idempotent ${run}`, text: "exactly once" };
sgMail.client.setDefaultHeader("Idempotency-Key", `sendgrid-node-${run}`);
out.idempotent = [ids(await sgMail.send(retry))[0], ids(await sgMail.send(retry))[0]];
delete sgMail.client.defaultHeaders["Idempotency-Key"];

console.log(JSON.stringify(out));
