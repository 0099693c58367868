"""What the checks in deploy/tools share: a tally of checks and their failures, and reading
rendered manifests. Imported by the scripts beside it (python puts a script's directory first on
sys.path)."""

import sys


class Report:
    def __init__(self):
        self.failures = []
        self.passed = 0

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
        return ok

    def note(self, text):
        print("  " + text)

    def finish(self, what):
        """Prints every failure and the tally, then exits 1 if anything failed."""
        for failure in self.failures:
            print("FAIL " + failure)
        print("%s: %d checks passed, %d failed" % (what, self.passed, len(self.failures)))
        sys.exit(1 if self.failures else 0)


def load_manifests(path):
    """The objects of a multi-document YAML file (PyYAML: the venv of scripts/validate-deploy.sh)."""
    import yaml

    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]
