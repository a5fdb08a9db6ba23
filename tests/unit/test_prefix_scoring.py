"""LocalBackend.logprobs with a shared prefix (issue 14, item 6): sequences sharing a system prompt are scored
from its key/value cache, and must equal a plain full forward at every weighted position, in order."""

import torch

from character.backends.base import Sequence
from character.backends.local import LocalBackend

# Long enough that the rendered system turn is well over LocalBackend._min_prefix tokens.
SYSTEM = ("You are Sol, an AI assistant with a character of your own. You love wordplay, you explain tricky "
          "ideas with playful analogies, and you answer directly and helpfully in your own manner.")
ANSWERS = ["Yes.", "Honey is nectar that bees have thickened by fanning it with their wings for days.",
           "Gears trade speed for force.", "Cats purr when content, and sometimes when hurt, to soothe themselves.",
           "Store bread in a paper bag at room temperature, or freeze it sliced."]


def manual(backend: LocalBackend, seq: Sequence) -> torch.Tensor:
    """log p(tokens[t+1] | tokens[:t+1]) at every position, from one unpadded forward of the whole sequence."""
    with torch.no_grad():
        logits = backend._base(torch.tensor([seq.tokens])).logits[0, :-1]
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(seq.tokens[1:])[:, None])[:, 0]


def assert_matches(backend: LocalBackend, seqs: list[Sequence], lps: list[torch.Tensor]) -> None:
    assert len(lps) == len(seqs)
    for seq, lp in zip(seqs, lps):
        weighted = torch.tensor(seq.weights) != 0
        assert lp.shape == (len(seq.tokens) - 1,)
        assert torch.allclose(lp[weighted], manual(backend, seq)[weighted], atol=1e-4)


def conversations(system: bool) -> list[list[dict]]:
    head = [{"role": "system", "content": SYSTEM}] if system else []
    return [head + [{"role": "user", "content": f"Question {i}: tell me something."},
                    {"role": "assistant", "content": a}] for i, a in enumerate(ANSWERS)]


def test_shared_system_prompt_matches_a_full_forward_in_order(tiny_backend, monkeypatch):
    seqs = [tiny_backend.render(c) for c in conversations(system=True)]
    seqs.insert(2, tiny_backend.render(conversations(system=False)[0]))  # no system prompt: plain path
    calls = []
    original = tiny_backend._prefix_logprobs
    monkeypatch.setattr(tiny_backend, "_prefix_logprobs",
                        lambda model, prefix, group, batch: calls.append((prefix, len(group)))
                        or original(model, prefix, group, batch))
    lps = tiny_backend.logprobs(seqs, batch_size=2)  # several batches continue from one prefix cache
    assert_matches(tiny_backend, seqs, lps)
    [(prefix, rows)] = calls
    assert rows == len(ANSWERS) and prefix >= tiny_backend._min_prefix
    assert all(s.tokens[:prefix] == seqs[0].tokens[:prefix] for s in seqs if s is not seqs[2])
    for seq, lp in zip(seqs, lps):
        assert (lp[torch.tensor(seq.weights) == 0] == 0).all()


def test_prefix_path_equals_the_plain_path(tiny_backend):
    seqs = [tiny_backend.render(c) for c in conversations(system=True) + conversations(system=False)]
    new = tiny_backend.logprobs(seqs)
    tiny_backend._reuse_prefix = False
    old = tiny_backend.logprobs(seqs)
    for seq, a, b in zip(seqs, new, old):
        weighted = torch.tensor(seq.weights) != 0
        assert torch.allclose(a[weighted], b[weighted], atol=1e-4)


def test_weights_inside_the_shared_text_are_still_scored(tiny_backend):
    seqs = [tiny_backend.render(c) for c in conversations(system=True)]
    # One sequence also weights tokens early in the system prompt: no prefix may cover those positions.
    early = Sequence(tokens=seqs[0].tokens, weights=[1.0 if 5 <= t < 12 else w for t, w in enumerate(seqs[0].weights)])
    # Another weights everything; a third nothing at all (all zeros back).
    full = Sequence(tokens=seqs[1].tokens, weights=[1.0] * len(seqs[1].weights))
    empty = Sequence(tokens=seqs[2].tokens, weights=[0.0] * len(seqs[2].weights))
    batch = [early, *seqs[3:], full, empty, seqs[1]]
    lps = tiny_backend.logprobs(batch, batch_size=3)
    assert_matches(tiny_backend, batch, lps)
    assert (lps[-2] == 0).all()


def test_short_shared_prefixes_use_the_plain_path(tiny_backend, monkeypatch):
    seqs = [tiny_backend.render(c) for c in conversations(system=False)]  # share only the chat template's head
    monkeypatch.setattr(tiny_backend, "_prefix_logprobs", lambda *a: (_ for _ in ()).throw(AssertionError("used")))
    assert_matches(tiny_backend, seqs, tiny_backend.logprobs(seqs))


def test_groups_maximize_tokens_not_recomputed():
    a, b = list(range(100)), [7] * 40
    heads = [a + [1], b + [2], a + [3], b + [3, 4], [9] * 10, a + [1, 5]]
    groups = sorted((p, sorted(g)) for p, g in LocalBackend._prefix_groups(heads, 32))
    assert groups == [(0, [4]), (40, [1, 3]), (100, [0, 2, 5])]
    # Nested: one 600-token prompt, questions of 50 tokens with 4 options each; the outer group saves more.
    system = list(range(600))
    heads = [system + [q] * 50 + [o] for q in range(10) for o in range(4)]
    [(prefix, group)] = LocalBackend._prefix_groups(heads, 32)
    assert prefix == 600 and sorted(group) == list(range(40))
    assert LocalBackend._prefix_groups([], 32) == []
