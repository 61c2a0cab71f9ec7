"""The DP section of BENCHMARKS.md: its lines from hand-made figures, spliced into its own heading."""

from fedlora_jax.benchmarks import report


def _dp(**extra) -> dict:
  run = {"median_s": 2.0, "tokens_per_s": 1000.0, "compile_s": 3.0}
  return {"preset": "qwen3-tiny", "dp_over_no_dp_tokens_per_s": 0.25,
          "shape": {"clients": 8, "local_steps": 4, "batch": 4, "seq": 128, "rank": 8},
          "no_dp": run, "dp_sgd": {**run, "median_s": 8.0, "tokens_per_s": 250.0}, **extra}


def test_dp_lines_and_splice():
  lines = report.dp_lines(_dp(date="2026-11-29T09:30:00+00:00", command="python b.py",
                              load_average_at_start=[3.0, 2.5, 2.0],
                              load_average_at_end=[4.0, 3.0, 2.25]))
  text = "\n".join(lines)
  assert lines[0] == report.DP_HEADING
  assert "load average at start 3.00, 2.50, 2.00, at end 4.00, 3.00, 2.25" in text
  assert "| no_dp | 2.000 | 1000 | 3.0 |\n| dp_sgd | 8.000 | 250 | 3.0 |" in text
  assert "DP-SGD throughput / plain: **0.25**" in text
  old = "# Benchmarks\n\n## Round\n\nr\n\n" + report.DP_HEADING + "\n\nold\n\n## Notes\n\nn\n"
  new = report.splice_section(old, report.DP_HEADING, lines)
  assert "## Round\n\nr\n" in new and "## Notes\n\nn" in new and "old" not in new
  assert new.count(report.DP_HEADING) == 1
  assert "Measured on" not in "\n".join(report.dp_lines(_dp()))  # a full run: the page header
