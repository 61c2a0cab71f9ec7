"""MedQA / MedMCQA / PubMedQA loaders on small files written here, and their documented errors."""

import json

import pytest

from fedlora_jax.data import DataError, MCQRecord, load_medmcqa, load_medqa, load_pubmedqa

OPTS = {"A": "Aspirin", "B": "Heparin", "C": "Warfarin", "D": "Clopidogrel"}


def _jsonl(path, rows):
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  return str(path)


def _medqa_rows():
  return [{"question": "Drug for acute MI?", "options": OPTS, "answer_idx": "A",
           "answer": "Aspirin", "meta_info": "step1"},
          {"question": "Anticoagulant in pregnancy?", "options": OPTS, "answer_idx": "B",
           "answer": "Heparin", "meta_info": "step2&3"}]


def test_medqa_parses_jsonl(tmp_path):
  records = load_medqa(_jsonl(tmp_path / "medqa.jsonl", _medqa_rows()))
  assert records == [
      MCQRecord("Drug for acute MI?", tuple(OPTS.values()), 0, "medqa", "0", "step1"),
      MCQRecord("Anticoagulant in pregnancy?", tuple(OPTS.values()), 1, "medqa", "1", "step2&3")]


def test_medqa_key_value_option_list(tmp_path):
  rows = [{"question": "q", "answer_idx": "C",
           "options": [{"key": k, "value": v} for k, v in OPTS.items()]}]
  (r,) = load_medqa(_jsonl(tmp_path / "medqa.jsonl", rows))
  assert r.answer == 2 and r.options[2] == "Warfarin"


def test_medqa_errors(tmp_path):
  rows = _medqa_rows()
  rows[1]["answer_idx"] = "E"
  with pytest.raises(DataError) as e:
    load_medqa(_jsonl(tmp_path / "bad_answer.jsonl", rows))
  assert (e.value.record, e.value.field) == (1, "answer_idx")
  assert "bad_answer.jsonl: record 1: field 'answer_idx'" in str(e.value)
  rows = _medqa_rows()
  del rows[1]["question"]
  with pytest.raises(DataError, match=r"missing_q.jsonl: record 1: field 'question': missing"):
    load_medqa(_jsonl(tmp_path / "missing_q.jsonl", rows))
  with pytest.raises(DataError, match=r"nope.jsonl: no such file"):
    load_medqa(str(tmp_path / "nope.jsonl"))
  broken = tmp_path / "broken.jsonl"
  broken.write_text(json.dumps(_medqa_rows()[0]) + "\n{\"question\": oops\n")
  with pytest.raises(DataError, match=r"broken.jsonl: record 1: cannot parse") as e:
    load_medqa(str(broken))
  assert e.value.record == 1


def _medmcqa_rows(cops):
  return [{"id": f"m{i}", "question": f"q{i}", "opa": "a", "opb": "b", "opc": "c", "opd": "d",
           "cop": cop, "subject_name": "Anatomy" if i % 2 else "Pharmacology"}
          for i, cop in enumerate(cops)]


def test_medmcqa_parquet_zero_based(tmp_path):
  import datasets
  path = str(tmp_path / "medmcqa.parquet")
  datasets.Dataset.from_list(_medmcqa_rows([0, 3, 2])).to_parquet(path)
  records = load_medmcqa(path)
  assert [r.answer for r in records] == [0, 3, 2]
  assert [r.id for r in records] == ["m0", "m1", "m2"]
  assert records[1].label == "Anatomy" and records[0].options == ("a", "b", "c", "d")


def test_medmcqa_one_based_inferred_or_given(tmp_path):
  path = _jsonl(tmp_path / "dev.json", _medmcqa_rows([1, 4, 2]))
  assert [r.answer for r in load_medmcqa(path)] == [0, 3, 1]
  path = _jsonl(tmp_path / "dev2.json", _medmcqa_rows([1, 2, 3]))
  assert [r.answer for r in load_medmcqa(path, cop_base=1)] == [0, 1, 2]
  assert [r.answer for r in load_medmcqa(path)] == [1, 2, 3]  # default: HF 0-based


def test_medmcqa_errors(tmp_path):
  with pytest.raises(DataError) as e:
    load_medmcqa(_jsonl(tmp_path / "bad.jsonl", _medmcqa_rows([0, 7])))
  assert (e.value.record, e.value.field) == (1, "cop")
  rows = _medmcqa_rows([0, 1])
  del rows[0]["opc"]
  with pytest.raises(DataError, match="record 0: field 'opc': missing"):
    load_medmcqa(_jsonl(tmp_path / "missing.jsonl", rows))
  with pytest.raises(DataError, match="both 0 and 4"):
    load_medmcqa(_jsonl(tmp_path / "mixed.jsonl", _medmcqa_rows([0, 4])))
  with pytest.raises(DataError, match="no such file"):
    load_medmcqa(str(tmp_path / "absent.parquet"))


def _pqal():
  return {"21645374": {"QUESTION": "Do statins reduce mortality?",
                       "CONTEXTS": ["Background text.", "Results text."],
                       "final_decision": "yes", "LONG_ANSWER": "..."},
          "12345678": {"QUESTION": "Is X linked to Y?", "CONTEXTS": ["Only context."],
                       "final_decision": "maybe"}}


def test_pubmedqa_ori_pqal(tmp_path):
  path = tmp_path / "ori_pqal.json"
  path.write_text(json.dumps(_pqal()))
  a, b = load_pubmedqa(str(path))
  assert a == MCQRecord("Background text. Results text.\nDo statins reduce mortality?",
                        ("yes", "no", "maybe"), 0, "pubmedqa", "21645374", "yes")
  assert (b.answer, b.id) == (2, "12345678")


def test_pubmedqa_hf_layout(tmp_path):
  rows = [{"pubid": 7, "question": "Q?", "context": {"contexts": ["c1", "c2"]},
           "final_decision": "no"}]
  (r,) = load_pubmedqa(_jsonl(tmp_path / "pqa_labeled.jsonl", rows))
  assert (r.question, r.answer, r.id) == ("c1 c2\nQ?", 1, "7")


def test_pubmedqa_errors(tmp_path):
  data = _pqal()
  data["12345678"]["final_decision"] = "perhaps"
  path = tmp_path / "ori_pqal.json"
  path.write_text(json.dumps(data))
  with pytest.raises(DataError) as e:
    load_pubmedqa(str(path))
  assert (e.value.record, e.value.field) == ("12345678", "final_decision")
  data = _pqal()
  del data["21645374"]["CONTEXTS"]
  path.write_text(json.dumps(data))
  with pytest.raises(DataError, match="record 21645374: field 'CONTEXTS'"):
    load_pubmedqa(str(path))
  path.write_text('{"1": {"QUESTION": ')
  with pytest.raises(DataError, match="invalid JSON"):
    load_pubmedqa(str(path))
  with pytest.raises(DataError, match="no such file"):
    load_pubmedqa(str(tmp_path / "absent.json"))
