"""Runs the shared cases (`../cases.json`) against the built component from Python, through
PyPI `wasmtime`: `python test_component.py <component.wasm> <cases.json>`. Prints a line per
failure and `propagation (python): N passed, M failed`; exits 1 on any failure."""

import sys

import cases
from propagation import Propagation, PropagationError


def main(wasm, case_file):
    p = Propagation(wasm)
    passed, failed, failures = 0, 0, []
    for case in cases.load(case_file):
        name = case["name"]
        config = cases.config_of(case, p.default_config())
        try:
            got = cases.normalized(p.propagate(cases.headers_of(case), config))
        except PropagationError as e:
            wrong = [] if case.get("error", "\0") in str(e) else [f"{name}: error {e}"]
        else:
            wrong = [
                f"{name}: {key}: got {got[key]!r}, want {want!r}"
                for key, want in case.get("expect", {}).items()
                if got[key] != want
            ]
            if "error" in case:
                wrong.append(f"{name}: wanted error {case['error']}, got {got}")
        failures.extend(wrong)
        passed += not wrong
        failed += bool(wrong)
    for line in failures:
        print(line)
    print(f"propagation (python): {passed} passed, {failed} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
