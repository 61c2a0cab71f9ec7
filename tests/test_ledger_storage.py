"""Storage: every tampered byte is caught at its block; a crash leaves a verifiable prefix."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from fedlora_jax.ledger import (
    Attestation, BlockError, Identity, Ledger, LedgerError, attestation_message, backend_available,
    block_hash, get_backend, tree_digest, verify_ledger, weights_of,
)
from fedlora_jax.ledger.attestation import attestation_hash
from tests.ledger_fixtures import create_ledger, join

SEED = b"fedlora-jax ledger storage tests"  # 32 bytes


def _digest(x: float) -> bytes:
  return tree_digest({"w": np.full((2,), x, np.float32)})


def _build(path: Path) -> tuple[Ledger, Identity, list[Identity]]:
  """genesis, register, a round with a rejection, a round with no valid client."""
  backend = get_backend("auto")
  server = Identity.generate("server", SEED, backend)
  clients = [Identity.generate(f"c{i}", SEED, backend) for i in range(3)]
  ledger = create_ledger(path, "storage-run", server, clients[:2], backend)
  join(ledger, clients[:2], clients[2:])
  for r, signers in ((0, clients), (1, [])):
    ctx = ledger.round_context(r)
    subs = [(Attestation.create(c, ctx, _digest(i), 4 + i, backend), _digest(i))
            for i, c in enumerate(signers)]
    if r == 0:
      att = subs[1][0]
      subs[1] = (dataclasses.replace(att, signature=clients[0].sign(att.message(), backend)),
                 subs[1][1])
    else:
      subs = [(Attestation.create(clients[0], ctx, _digest(0), 1, backend), _digest(1))]
    ledger.append_round(r, ledger.verify_round(r, subs), _digest(100 + r), "fedavg")
  return ledger, server, clients


@pytest.fixture
def built(tmp_path: Path) -> tuple[Ledger, Identity, list[Identity]]:
  return _build(tmp_path / "ledger.jsonl")


def _flip(ch: str) -> str:
  if ch in "0123456789abcdef":
    return "0123456789abcdef"["0123456789abcdef".index(ch) - 1]
  return "x" if ch != "x" else "y"


def _value_positions(line: str) -> list[int]:
  """Positions of the first character inside each leaf value of the block (keys excluded)."""
  positions, decoder, i = [], json.JSONDecoder(), 0
  in_key = True
  while i < len(line):
    ch = line[i]
    if ch == '"':
      _, end = decoder.raw_decode(line, i)
      if not (in_key and line[end:end + 1] == ":"):
        positions.append(i + 1 if end - i > 2 else i)
      in_key = False
      i = end
    elif ch in "{,":
      in_key, i = True, i + 1
    elif ch in "[:}]":
      in_key, i = False, i + 1
    else:
      positions.append(i)  # number, true/false/null
      while i < len(line) and line[i] not in ",}]":
        i += 1
  return positions


def test_value_positions_helper() -> None:
  line = '{"a":"xy","b":[1,{"c":null}],"d":""}'
  assert [line[p] for p in _value_positions(line)] == ["x", "1", "n", '"']


@pytest.mark.skipif(not backend_available("arkworks"),
                    reason="~600 full verifications: too slow on py_ecc alone")
def test_every_tampered_value_detected_at_its_block(built) -> None:
  ledger, _, _ = built
  path = ledger.path
  lines = path.read_text().splitlines(keepends=True)
  assert len(lines) == 4
  checked = 0
  for index, line in enumerate(lines):
    body = line[:-1]
    # Every leaf value, plus every 13th byte (structure, keys) of the block.
    for pos in sorted(set(_value_positions(body)) | set(range(0, len(body), 13))):
      tampered = body[:pos] + _flip(body[pos]) + body[pos + 1:]
      path.write_text("".join(lines[:index]) + tampered + "\n" + "".join(lines[index + 1:]))
      result = verify_ledger(path)
      assert not result.ok and result.first_bad_block == index, (index, pos, result)
      checked += 1
  assert checked > 400
  path.write_text("".join(lines))
  assert verify_ledger(path).ok


def _reseal_from(lines: list[str], index: int, edit) -> list[str]:
  """Edits block `index`, then recomputes its hash and re-links all later blocks."""
  blocks = [json.loads(line) for line in lines]
  edit(blocks[index])
  for i in range(index, len(blocks)):
    if i > index:
      blocks[i]["prev_hash"] = blocks[i - 1]["block_hash"]
    blocks[i]["block_hash"] = block_hash(blocks[i])
  return [json.dumps(b, sort_keys=True, separators=(",", ":")) + "\n" for b in blocks]


def _inflate(block: dict, ledger_id: str) -> None:
  """Claims 1000 samples for the first participant, with a consistent hash and weights."""
  p = block["participants"]
  p[0]["num_samples"] = 1000
  msg = attestation_message(ledger_id, block["round"], block["prev_hash"],
                            p[0]["client_id"], p[0]["update_digest"], 1000)
  p[0]["attestation_hash"] = attestation_hash(msg)
  for x, w in zip(p, weights_of([x["num_samples"] for x in p], block["weighting"])):
    x["weight"] = w


@pytest.mark.parametrize("index,edit,reason", [
    (0, lambda b, _: b["registrations"][1].update(name="impostor"), "not bound by the key's"),
    (0, lambda b, _: b.update(nonce="ab" * 32), "ledger_id does not end with"),
    (2, lambda b, _: b["participants"][0].update(num_samples=1000), "attestation hash"),
    (2, lambda b, _: b["participants"][0].update(weight=0.9), "weights are not"),
    (2, _inflate, "aggregate signature"),
    (3, lambda b, _: b["rejected"][0].update(reason="unregistered"), "server signature"),
    (3, lambda b, _: b.update(global_digest="ab" * 32), "server signature"),
])
def test_rehashed_tampering_caught_by_signatures(built, index, edit, reason) -> None:
  ledger, _, _ = built
  lines = ledger.path.read_text().splitlines(keepends=True)
  ledger.path.write_text("".join(_reseal_from(lines, index,
                                              lambda b: edit(b, ledger.ledger_id))))
  result = verify_ledger(ledger.path)
  assert not result.ok and result.first_bad_block == index and reason in result.reason
  with pytest.raises(BlockError, match=f"block {index}: .*{reason}"):
    Ledger.open(ledger.path)


def test_torn_last_line_leaves_verifiable_prefix(built) -> None:
  ledger, server, _ = built
  full = ledger.path.read_bytes()
  *prefix_lines, last = full.splitlines(keepends=True)
  prefix = b"".join(prefix_lines)
  for cut in (1, len(last) // 2, len(last) - 1):  # len - 1: everything but the newline
    ledger.path.write_bytes(prefix + last[:cut])
    result = verify_ledger(ledger.path)
    assert result.ok and result.num_blocks == 3 and result.torn_tail
    reopened = Ledger.open(ledger.path, server_identity=server)
    assert reopened.torn_tail == last[:cut] and reopened.last_round == 0
  # The next append cuts the fragment off; the file is then clean and fully valid.
  reopened.append_round(1, reopened.verify_round(1, []), _digest(7), "fedavg")
  assert ledger.path.read_bytes().startswith(prefix)
  result = verify_ledger(ledger.path)
  assert result.ok and result.num_blocks == 4 and not result.torn_tail


def test_damaged_files(tmp_path: Path, built) -> None:
  ledger, _, _ = built
  lines = ledger.path.read_text().splitlines(keepends=True)
  cases = {
      "": (0, "no complete genesis"),
      lines[0] + "{}\n" + "".join(lines[1:]): (1, "malformed block"),
      "".join(lines[:2]) + "\n" + "".join(lines[2:]): (2, "malformed JSON"),
      lines[0] + lines[2] + lines[3]: (1, "index"),  # a block removed
      lines[0] + lines[1].replace(",", ", ", 1) + "".join(lines[2:]): (1, "canonical"),
      "".join(lines) + lines[3]: (4, "index"),  # duplicated last block
  }
  for text, (index, reason) in cases.items():
    ledger.path.write_text(text)
    result = verify_ledger(ledger.path)
    assert (result.ok, result.first_bad_block) == (False, index) and reason in result.reason
  with pytest.raises(LedgerError, match="no ledger file"):
    verify_ledger(tmp_path / "missing.jsonl")


def test_create_and_open_guards(built) -> None:
  ledger, server, clients = built
  with pytest.raises(LedgerError, match="already exists"):
    create_ledger(ledger.path, "again", server, [], ledger.backend)
  writer = Ledger.open(ledger.path, server_identity=server)
  with ledger.path.open("ab") as f:
    f.write(b"concurrent writer")
  with pytest.raises(LedgerError, match="changed on disk"):
    writer.append_round(5, writer.verify_round(5, []), _digest(5), "fedavg")
  tail_only = Ledger.open(Path(str(ledger.path)), full=False)
  assert tail_only.head_hash == writer.head_hash and tail_only.torn_tail == b"concurrent writer"
