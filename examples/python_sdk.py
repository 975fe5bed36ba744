"""An example workflow written with the Python SDK (`shoal apply examples/python_sdk.py`).

Its function tasks import ``shoal_examples.numbers`` from ``examples/code``, which
`make dev` puts on SHOAL_CODE_PATH.
"""

from shoal.sdk import Workflow, python, shell

with Workflow("python-sdk", params={"n": "20"}, description="shell -> functions") as wf:
    extract = shell("extract", "echo '${setValue(rows=42)}'", outputs=["rows"])
    fib = python("fibo", function="shoal_examples.numbers:fibo", args={"n": "${n}"},
                 outputs=["value"])
    add = python("total", function="shoal_examples.numbers:total",
                 args={"rows": "${rows}", "value": "${value}"}, outputs=["total"])
    out = python("report", function="shoal_examples.numbers:report",
                 args={"total": "${total}", "label": "rows + fibo(${n})"}, outputs=["line"])
    [extract, fib] >> add >> out
