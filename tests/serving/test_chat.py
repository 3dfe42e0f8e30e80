"""Chat through the server: GenerateRequest.messages rendered with the model's chat template.

SmolLM2-135M-Instruct (its Q4_1 GGUF, fetched by scripts/fetch-assets.sh) on 3 ranks: status()
names its template (chatml); the greedy reply to one user message equals the golden of
tests/smollm2/ (and `kvshard client chat` prints it); a second turn carries the history; the
reply stops at <|im_end|>, which is not part of the text. Bad conversations are INVALID_REQUEST
naming the field; a model without a chat template refuses messages but still serves prompts."""

import json
import os
import subprocess

import harness
from harness import ErrorCode, KvshardError, greedy
from kvshard_rpc.ttypes import ChatMessage

SMOLLM2 = os.path.join(harness.REPO, "assets", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
GOLDENS = os.path.join(harness.REPO, "tests", "smollm2", "goldens.json")


class ChatTest(harness.unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(SMOLLM2):
            raise RuntimeError(SMOLLM2 + " is missing: scripts/fetch-assets.sh fetches it")
        with open(GOLDENS) as f:
            cls.goldens = json.load(f)
        cls.server = harness.Server(model=SMOLLM2, np=3)

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0, cls.server.read_log()

    def test_status_names_the_template(self):
        c = self.server.client()
        self.assertEqual(c.status().chat_template, "chatml")
        c.close()

    def test_one_turn_equals_the_golden_and_stops_at_end_of_turn(self):
        c = self.server.client()
        for g in self.goldens:
            r = c.generate(greedy(messages=[ChatMessage(role="user", content=g["question"])],
                                  max_tokens=40))
            self.assertEqual(r.text, g["numpy_text"])
            self.assertEqual(r.finish_reason, "stop")
            self.assertEqual(list(r.token_ids), [t for t in g["numpy_ids"] if t != 2])
            # The prompt the template rendered, as the tokenizer reads it back.
            self.assertTrue(r.prompt_text.startswith("<|im_start|>system\nYou are a helpful AI"))
            self.assertTrue(r.prompt_text.endswith("<|im_start|>assistant\n"))
        harness.assert_all_blocks_free(self, c)
        c.close()

    def test_a_second_turn_carries_the_history(self):
        c = self.server.client()
        first = self.goldens[0]
        history = [ChatMessage(role="user", content=first["question"]),
                   ChatMessage(role="assistant", content=first["numpy_text"]),
                   ChatMessage(role="user", content="And of Italy?")]
        r = c.generate(greedy(messages=history, max_tokens=30))
        self.assertIn("What is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
                      "The capital of France is Paris.<|im_end|>\n<|im_start|>user\nAnd of "
                      "Italy?", r.prompt_text)
        self.assertEqual(r.finish_reason, "stop")
        self.assertGreater(r.generated_tokens, 0)
        c.close()

    def test_the_cli_client_chats(self):
        out = subprocess.run([harness.BIN, "client", "--port", str(self.server.port), "chat",
                              "--message", self.goldens[0]["question"], "--max-tokens", "40"],
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout, self.goldens[0]["numpy_text"] + "\n")

    def test_bad_conversations_are_invalid_requests(self):
        c = self.server.client()
        cases = [([], "messages"),
                 ([ChatMessage(role="robot", content="x")], "messages[0]"),
                 ([ChatMessage(role="user", content="a"), ChatMessage(role="system", content="b")],
                  "messages[1]")]
        for messages, field in cases:
            with self.assertRaises(KvshardError) as e:
                c.generate(greedy(messages=messages, max_tokens=4))
            self.assertEqual(e.exception.code, ErrorCode.INVALID_REQUEST)
            self.assertEqual(e.exception.field, field, e.exception.message)
        with self.assertRaises(KvshardError) as e:
            c.generate(greedy(prompt="hi", messages=[ChatMessage(role="user", content="x")]))
        self.assertEqual(e.exception.code, ErrorCode.INVALID_REQUEST)
        c.close()


class NoTemplateTest(harness.ServerTestCase):
    def test_messages_are_refused_and_prompts_served(self):
        c = self.client
        self.assertEqual(c.status().chat_template, "")
        with self.assertRaises(KvshardError) as e:
            c.generate(greedy(messages=[ChatMessage(role="user", content="Hi")], max_tokens=4))
        self.assertEqual(e.exception.code, ErrorCode.INVALID_REQUEST)
        self.assertEqual(e.exception.field, "messages")
        self.assertIn("--chat-template", e.exception.message)
        with open(harness.GOLDEN_ONCE) as f:
            golden = f.read()
        r = c.generate(greedy(prompt="Once upon a time", max_tokens=60))
        self.assertEqual(r.prompt_text + r.text + "\n", golden)


if __name__ == "__main__":
    harness.unittest.main()
