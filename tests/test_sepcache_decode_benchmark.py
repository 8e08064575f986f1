"""benchmarks/sepcache_decode.py runs end to end at tiny sizes (the H100 numbers come from the same script)."""
from benchmarks.sepcache_decode import main


def test_decode_benchmark_tiny(tmp_path):
    md = tmp_path / "results.md"
    rows = main(["--tiny", "--contexts", "160", "--batches", "2", "--new_tokens", "4", "--prefill_chunk", "64",
                 "--sepcache", "4", "8", "32", "64", "--device", "cpu", "--dtype", "float32", "--results", str(md)])
    by_cache = {r["cache"]: r for r in rows}
    assert by_cache["DynamicCache"]["cache_entries"] == 164
    assert by_cache["SepCache"]["cache_entries"] <= 64
    assert "| 160 | 2 | SepCache |" in md.read_text()
