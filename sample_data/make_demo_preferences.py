"""Write the demo's preference pairs: a user who, rating blind, preferred a plain sentence to the demo's
"ANSWER: … / REASON: …" format — the style the SFT demo taught. Same shape as the blind A/B screen's
RUN/chat/preferences.jsonl, so it trains DPO as that file does:

    python sample_data/make_demo_preferences.py          # writes sample_data/demo_preferences.jsonl
    loradeck train sample_data/configs/demo.toml --set train.method=dpo --set model.adapter=runs/demo \\
        --set data.path=sample_data/demo_preferences.jsonl --set data.eval_path= ...
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    rows = [json.loads(line) for line in (HERE / "demo_train.jsonl").read_text(encoding="utf-8").splitlines()]
    with open(HERE / "demo_preferences.jsonl", "w", encoding="utf-8") as out:
        for row in rows:
            question = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
            formatted = row["output"]
            plain = formatted.split("REASON: ", 1)[1].strip()  # the reason is a whole sentence with the answer in it
            out.write(json.dumps({"prompt": [{"role": "user", "content": question}],
                                  "chosen": [{"role": "assistant", "content": plain}],
                                  "rejected": [{"role": "assistant", "content": formatted}],
                                  "chosen_model": "plain", "rejected_model": "demo"}, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} pairs to {HERE / 'demo_preferences.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
