"""SendCommand of the account's own Command documents, which moto accepts by any name and never
runs. What SSM does with one before anything reaches an instance, from the Systems Manager
API Reference (SendCommand: DocumentName, DocumentHash, Parameters; errors InvalidDocument,
InvalidParameters) and the User Guide's "Data elements and parameters" of document schema 2.2:

- the document must exist in the region (InvalidDocument);
- a DocumentHash given must be the sha256 of the content SSM runs, the default version's
  (the error code a mismatch answers is not documented: InvalidDocument, the code of a
  document that cannot be run, is answered);
- every parameter given must be declared, each declared one without a `default` must be given,
  a String parameter takes one value, which must be one of its `allowedValues` and match its
  `allowedPattern` (InvalidParameters);
- then each `{{ name }}` (spaces allowed inside the braces) in the step's inputs is replaced
  by the parameter's value, and the agent runs the `aws:runShellScript` step's `runCommand`
  lines as one script, stopped after the step's `timeoutSeconds` (default 3600).

`render` answers the request as SendCommand of AWS-RunShellScript with that script would be
sent, so the VMs (machines.py) and the fast tier's scripted instances run it as they run any
command."""

import hashlib
import json
import re
import urllib.error
import urllib.request

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")


def get_document(upstream, region, name):
    """The default version of `name` from moto's SSM in `region`, or None."""
    req = urllib.request.Request(upstream + "/", data=json.dumps({"Name": name}).encode(), method="POST")
    req.add_header("Content-Type", "application/x-amz-json-1.1")
    req.add_header("X-Amz-Target", "AmazonSSM.GetDocument")
    req.add_header("Authorization", "AWS4-HMAC-SHA256 Credential=testing/20260101/%s/ssm/aws4_request, SignedHeaders=host, Signature=0" % region)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError:
        return None


def render(upstream, region, req):
    """(error, shell request): SSM's refusal of `req` as a dict with __type, or the request as
    the AWS-RunShellScript command it amounts to."""
    name = req.get("DocumentName") or ""
    doc = get_document(upstream, region, name)
    if doc is None:
        return {"__type": "InvalidDocument", "message": "Document %s does not exist in %s" % (name, region)}, None
    content = doc.get("Content") or ""
    want = req.get("DocumentHash")
    if want is not None and want != hashlib.sha256(content.encode()).hexdigest():
        return {"__type": "InvalidDocument",
                "message": "the content of document %s does not have the hash %s" % (name, want)}, None
    body = json.loads(content)
    declared = body.get("parameters") or {}
    given = req.get("Parameters") or {}
    values = {}
    for key, vals in given.items():
        spec = declared.get(key)
        if spec is None:
            return invalid("parameter %s is not declared by document %s" % (key, name)), None
        if len(vals) != 1:
            return invalid("parameter %s of type String takes one value, not %d" % (key, len(vals))), None
        values[key] = vals[0]
    for key, spec in declared.items():
        if key not in values:
            if "default" not in spec:
                return invalid("document %s requires parameter %s" % (name, key)), None
            values[key] = spec["default"]
        value = values[key]
        allowed = spec.get("allowedValues")
        if allowed is not None and value not in allowed:
            return invalid("parameter %s: %r is not one of %s" % (key, value, allowed)), None
        pattern = spec.get("allowedPattern")
        if pattern is not None and not re.search(pattern, value):
            return invalid("parameter %s: %r does not match %s" % (key, value, pattern)), None
    steps = [s for s in body.get("mainSteps") or [] if s.get("action") == "aws:runShellScript"]
    if not steps:
        return invalid("document %s has no aws:runShellScript step this emulator runs" % name), None
    inputs = steps[0].get("inputs") or {}

    def fill(text):
        def one(m):
            if m.group(1) not in values:
                raise KeyError(m.group(1))
            return values[m.group(1)]
        return PLACEHOLDER.sub(one, text)

    try:
        script = fill("\n".join(inputs.get("runCommand") or []))
        timeout = fill(str(inputs.get("timeoutSeconds", "3600")))
    except KeyError as e:
        return invalid("document %s uses the undeclared parameter %s" % (name, e.args[0])), None
    shell = dict(req)
    shell["DocumentName"] = "AWS-RunShellScript"
    shell["Parameters"] = {"commands": [script], "executionTimeout": [timeout]}
    # The step's name: the agent names the step's orchestration directory after it (machines.py).
    shell["_step"] = steps[0].get("name") or ""
    return None, shell


def invalid(message):
    return {"__type": "InvalidParameters", "message": message}
