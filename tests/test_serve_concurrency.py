"""Searching through ``retllm serve`` while ``retllm index`` adds files to the same index:
20 parallel API searches, none fails, and the counts they see only grow."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from urllib.parse import quote

from clip_fixtures import draw_photo
from serve_fixtures import index_folder, make_corpus, start

CLIENTS = 20
ROUNDS = 4
PER_ROUND = 6


def test_searches_never_fail_while_an_indexer_adds_files(tmp_path, tiny_clip_dir, capsys):
    photos = make_corpus(tmp_path)
    index_dir = tmp_path / "idx"
    index_folder(photos, index_dir, tiny_clip_dir)
    with start(photos, index_dir) as s:
        start_count = s.get_json("/api/status")["items"]["total"]
        done = threading.Event()
        lock = threading.Lock()
        seen: list[tuple[int, int, int]] = []  # (seq, vectors, hits) of every answer
        failures: list[str] = []
        per_client: dict[int, list[int]] = {}

        def client(n: int) -> None:
            mine = per_client.setdefault(n, [])
            queries = ["a photo", "the sea", "red", "garden flowers", "city at night"]
            i = 0
            while not done.is_set():
                q = queries[(n + i) % len(queries)]
                i += 1
                try:
                    status, _h, body = s.request("GET", f"/api/search?q={quote(q)}&k=200&modality=image")
                except Exception as exc:  # a dropped connection is a failure too
                    with lock:
                        failures.append(f"client {n}: {type(exc).__name__}: {exc}")
                    continue
                if status != 200:
                    with lock:
                        failures.append(f"client {n}: {status} {body[:200]!r}")
                    continue
                answer = json.loads(body)
                vectors = answer["index"]["vectors"]
                mine.append(vectors)
                with lock:
                    seen.append((answer["index"]["seq"], vectors, len(answer["hits"])))

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        new = tmp_path / "photos" / "new"
        new.mkdir()
        expected = start_count
        try:
            for r in range(ROUNDS):
                for i in range(PER_ROUND):
                    draw_photo(1000 + r * PER_ROUND + i, (400, 300)).save(new / f"r{r}_{i}.jpg", quality=88)
                proc = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "retllm_lite",
                        "index",
                        str(photos),
                        "--index",
                        str(index_dir),
                        "--clip-model",
                        str(tiny_clip_dir),
                        "--wait",
                        "60",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                assert proc.returncode == 0, proc.stderr
                expected += PER_ROUND
                deadline = time.monotonic() + 120  # the served index follows the indexer
                while not any(v == expected for _s, v, _h in seen[-CLIENTS * 4 :]):
                    assert time.monotonic() < deadline, f"searches never saw {expected} items"
                    assert not failures, failures[:5]
                    time.sleep(0.05)
        finally:
            done.set()
            for t in threads:
                t.join(300)
        assert not failures, failures[:5]
        assert len(seen) >= CLIENTS * ROUNDS
        for vectors in per_client.values():  # each client's answers: counts only grow
            assert vectors == sorted(vectors)
        by_seq = sorted(seen)
        assert [v for _s, v, _h in by_seq] == sorted(v for _s, v, _h in by_seq)  # across clients too
        assert all(h == v for _s, v, h in seen)  # k=200 > items: every visible item came back
        counts = sorted({v for _s, v, _h in seen})
        assert counts[0] == start_count and counts[-1] == start_count + ROUNDS * PER_ROUND
        assert s.get_json("/api/status")["items"]["total"] == counts[-1]
        with capsys.disabled():
            print(
                f"\nconcurrency: {CLIENTS} clients, {len(seen)} searches, 0 failures, "
                f"{ROUNDS} 'retllm index' runs adding {PER_ROUND} photos each; counts seen {counts}"
            )
    shutil.rmtree(index_dir)
