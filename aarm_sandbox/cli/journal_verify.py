"""`aarm-sandbox journal verify FILE`: the auditor's check, with a one-line verdict."""
from __future__ import annotations

import json
import sys

from aarm_sandbox.journal.keys import KeyFileError, trusted_keys
from aarm_sandbox.journal.verify import describe_intent, verify_file


def verify(path: str, key_specs: list[str], witness: str | None, as_json: bool = False) -> int:
    try:
        trusted = trusted_keys(key_specs)
    except KeyFileError as e:
        print(f"aarm-sandbox: {e}", file=sys.stderr)
        return 125
    try:
        rep = verify_file(path, trusted, witness)
    except OSError as e:
        # (not a verdict on the journal: the input is unusable, like any bad argument)
        print(f"aarm-sandbox: cannot read journal {path}: {e.strerror}", file=sys.stderr)
        return 125
    if as_json:
        print(json.dumps({"file": path, "status": ("ok", "tampered", "unsealed")[rep.exit_code],
                          "session_id": rep.session_id, "key_id": rep.key_id,
                          "records": rep.records, "sealed": rep.sealed, "problem": rep.problem,
                          "bad_seq": rep.bad_seq, "bad_line": rep.bad_line,
                          "unsigned_tail": rep.unsigned_tail, "torn_tail": rep.torn_tail,
                          "intents": rep.intents, "witnessed": rep.witnessed,
                          "intents_missing": rep.intents_missing,
                          "unmatched_intents": [describe_intent(i) for i in rep.unmatched_intents]},
                         sort_keys=True))
        return rep.exit_code
    out = sys.stdout if rep.exit_code == 0 else sys.stderr
    print(rep.summary(), file=out)
    if rep.unmatched_intents:
        print(f"{len(rep.unmatched_intents)} destructive action(s) were about to be performed "
              "with no receipt after them (they may have happened unrecorded):", file=out)
        for i in rep.unmatched_intents:
            print(f"  {describe_intent(i)}", file=out)
    return rep.exit_code
