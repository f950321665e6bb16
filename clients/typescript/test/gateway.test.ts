/**
 * End to end through a running gateway and a real notifier worker. The gateway, the worker and
 * the SMTP sink are started by tests/integration/gateway/test_typescript_client.py, which sets
 * the TASKLANE_CLIENT_TEST_* variables, then checks that the emails arrived at the sink and that
 * their Message-IDs are the ones this test wrote to TASKLANE_CLIENT_TEST_RESULT_FILE.
 */
import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { test } from "node:test";

import {
  type ResultOf,
  TasklaneError,
  createTasklaneClient,
} from "../src/index.js";

const env = process.env;
const baseUrl = env.TASKLANE_CLIENT_TEST_BASE_URL;
const skip = baseUrl
  ? false
  : "needs a gateway: run tests/integration/gateway/test_typescript_client.py";

function required(name: string): string {
  const value = env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

test("publishes emails through the gateway and reads their typed results", { skip }, async () => {
  const client = createTasklaneClient({
    baseUrl: required("TASKLANE_CLIENT_TEST_BASE_URL"),
    token: required("TASKLANE_CLIENT_TEST_TOKEN"),
  });
  const to = required("TASKLANE_CLIENT_TEST_EMAIL_TO");
  const subject = required("TASKLANE_CLIENT_TEST_SUBJECT");
  const key = required("TASKLANE_CLIENT_TEST_IDEMPOTENCY_KEY");

  const email = { to: [to], subject, text: "Sent from the TypeScript client." };
  const accepted = await client.publish("notifier.email.send", email, { idempotencyKey: key });
  assert.equal(accepted.task, "notifier.email.send");
  assert.equal(accepted.status_url, `/v1/tasks/${accepted.task_id}`);

  // The same key and body again: the first answer, nothing published.
  const replayed = await client.publish("notifier.email.send", email, { idempotencyKey: key });
  assert.equal(replayed.task_id, accepted.task_id);

  // The result is typed by the contract: message_id is a string, accepted a string[].
  const result: ResultOf<"notifier.email.send"> = await client.waitForResult(accepted.task_id, {
    task: "notifier.email.send",
    timeoutMs: 120_000,
  });
  const messageId: string = result.message_id;
  assert.match(messageId, /^<.+>$/);
  assert.ok(result.accepted.includes(to), `${to} not in ${JSON.stringify(result.accepted)}`);

  const status = await client.getTask(accepted.task_id);
  assert.equal(status.state, "SUCCESS");
  assert.equal(status.error, null);
  // `task` narrows the union: here `result` is the email result, not another contract's.
  if (status.task !== "notifier.email.send") assert.fail(`unexpected task ${status.task}`);
  assert.equal(status.result?.message_id, messageId);

  const batch = await client.publishBatch("notifier.email.send", [
    { ...email, subject: `${subject} (batch 1)` },
    { ...email, subject: `${subject} (batch 2)` },
  ]);
  assert.equal(batch.task_ids.length, 2);
  const batchResults = await Promise.all(
    batch.task_ids.map((id) =>
      client.waitForResult(id, { task: "notifier.email.send", timeoutMs: 120_000 }),
    ),
  );

  await writeFile(
    required("TASKLANE_CLIENT_TEST_RESULT_FILE"),
    JSON.stringify({
      [subject]: messageId,
      [`${subject} (batch 1)`]: batchResults[0]?.message_id,
      [`${subject} (batch 2)`]: batchResults[1]?.message_id,
    }),
  );
});

test("a payload that breaks the contract is a 422 naming the field", { skip }, async () => {
  const client = createTasklaneClient({
    baseUrl: required("TASKLANE_CLIENT_TEST_BASE_URL"),
    token: required("TASKLANE_CLIENT_TEST_TOKEN"),
  });
  const refused = await client
    .publish("notifier.email.send", { to: ["not-an-address"], subject: "x", text: "x" })
    .then(
      () => assert.fail("published an invalid payload"),
      (error: unknown) => error,
    );
  assert.ok(refused instanceof TasklaneError);
  assert.equal(refused.status, 422);
  assert.equal(refused.problem?.type, "https://tasklane.dev/problems/validation-failed");
  assert.deepEqual(
    refused.problem?.errors?.map((error) => error.pointer),
    ["/to/0"],
  );
});

test("an unknown token is a 401", { skip }, async () => {
  const client = createTasklaneClient({
    baseUrl: required("TASKLANE_CLIENT_TEST_BASE_URL"),
    token: "not-a-token",
  });
  await assert.rejects(client.getTask("00000000-0000-0000-0000-000000000000"), (error) => {
    assert.ok(error instanceof TasklaneError);
    assert.equal(error.status, 401);
    assert.equal(error.problem?.type, "https://tasklane.dev/problems/unauthorized");
    return true;
  });
});
