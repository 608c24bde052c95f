"""Fake agent whose last stdout line is not a JSON object.

Usage: bad_json.py MODE [--exit-code N]

MODE chooses the last line: ``text`` (plain words), ``array`` (``[1, 2, 3]``),
``number`` (``42``), ``string`` (``"just a string"``), ``truncated``
(``{"ok": tru``), ``nan`` (``{"x": NaN}``, not standard JSON), ``earlier`` (a valid
JSON object on an earlier line, then plain text last), ``empty`` (no output at all).
Prints ``some output`` first (except ``empty``). Exits with N (default 0).
"""

import argparse
import sys

LAST = {
    "text": "all done, no json here",
    "array": "[1, 2, 3]",
    "number": "42",
    "string": '"just a string"',
    "truncated": '{"ok": tru',
    "nan": '{"x": NaN}',
    "earlier": '{"ok": true}\nfinished',
}

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("mode", choices=[*LAST, "empty"])
parser.add_argument("--exit-code", type=int, default=0)
opts = parser.parse_args()
if opts.mode != "empty":
    print("some output")
    print(LAST[opts.mode])
sys.exit(opts.exit_code)
