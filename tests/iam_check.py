#!/usr/bin/env python3
"""The recorded-calls check: every AWS call `lease`, `leased` and the reaper made during
the end-to-end tests, checked against the IAM policy `lease iam-policy` prints for that
component.

The emulator enforces no IAM, so this is the proof that the policies cover the code:

1. The call log (tests/src/recorder.rs, one JSON line a call, written when the tests ran
   with LEASE_AWS_CALL_LOG) names each call's component by the SDK's `app/<name>`
   user-agent token, which the harness sets to the binary (and `lease`'s subcommand):
   `lease.setup` and `lease.teardown` are the operator's (`lease iam-policy setup`),
   every other `lease.<command>` (`doctor` included) the launcher, `leased.<instance-id>`
   the agent on that instance, `bootstrap` the reaper. The test's own reads carry no
   token and are not checked. An agent's call must be signed with an STS session key
   (`ASIA…`): the harness gives agents only the instance role's credentials, from IMDS.
2. Each call becomes the IAM action(s) it needs and the resource ARN(s) it acts on:
   the action is the API's own name, except the few documented exceptions in
   AUTHORISED_AS; the ARN is built from the Service Authorization Reference's resource
   ARN format for that action (policy_sentry's copy of it), filled in from the request.
   RunInstances also needs `ec2:CreateTags` on each resource it tags (with
   `ec2:CreateAction=RunInstances`) and `iam:PassRole` for its instance profile, as the
   EC2 User Guide documents.
3. The policy is evaluated as IAM does for one identity policy with Allow statements
   only: action matched (wildcards, case-insensitive), resource matched (wildcards, and
   the policy variables that apply), every condition true. The condition keys are
   taken from the request (`aws:RequestTag/*`, `aws:TagKeys`, `ec2:CreateAction`,
   `iam:PassedToService`, `s3:prefix`), and `ec2:SourceInstanceARN` from the instance
   the agent runs as. Keys about the target's current state (`aws:ResourceTag/*`,
   `ssm:resourceTag/*`) cannot be read from a request: they are assumed true and
   counted, not hidden.

Prints the counts (calls checked, actions covered, grants no test exercised) and exits 1
when a call is not allowed.

usage: iam_check.py CALL_LOG_DIR [--lease PATH_TO_lease] [--drop ACTION]...
"""

import argparse
import fnmatch
import glob
import json
import os
import re
import subprocess
import sys
import urllib.parse
from collections import Counter, defaultdict

from policy_sentry.querying.actions import get_action_data

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"  # the harness's region (tests/src/moto.rs)
PARTITION = "aws"

# API calls authorised as another action. Sources: Amazon SQS Developer Guide, "Amazon
# SQS API permissions: Actions and resource reference" (batch actions use the
# permissions of their single-message counterparts); Amazon SNS API Reference,
# PublishBatch ("requires sns:Publish"); Amazon S3 User Guide, "Multipart upload and
# permissions" (CreateMultipartUpload, UploadPart, CompleteMultipartUpload need
# s3:PutObject) and the S3 API Reference for HeadObject (s3:GetObject), ListObjectsV2
# and HeadBucket (s3:ListBucket).
AUTHORISED_AS = {
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "sns:PublishBatch": "sns:Publish",
    "s3:CreateMultipartUpload": "s3:PutObject",
    "s3:UploadPart": "s3:PutObject",
    "s3:CompleteMultipartUpload": "s3:PutObject",
    "s3:HeadObject": "s3:GetObject",
    "s3:ListObjectsV2": "s3:ListBucket",
    "s3:HeadBucket": "s3:ListBucket",
    # S3 bucket sub-resources whose IAM action is named otherwise (Service
    # Authorization Reference, "Actions defined by Amazon S3", the API each action
    # authorises; DeleteBucketLifecycle: S3 API Reference, "Permissions").
    "s3:GetBucketLifecycleConfiguration": "s3:GetLifecycleConfiguration",
    "s3:PutBucketLifecycleConfiguration": "s3:PutLifecycleConfiguration",
    "s3:DeleteBucketLifecycle": "s3:PutLifecycleConfiguration",
    "s3:GetBucketEncryption": "s3:GetEncryptionConfiguration",
    "s3:PutBucketEncryption": "s3:PutEncryptionConfiguration",
    "s3:GetPublicAccessBlock": "s3:GetBucketPublicAccessBlock",
    "s3:PutPublicAccessBlock": "s3:PutBucketPublicAccessBlock",
    "s3:ListObjectVersions": "s3:ListBucketVersions",
}

# The SigV4 signing name of a service where it is not its IAM prefix.
IAM_PREFIX = {"monitoring": "cloudwatch"}

# Calls that need no permission (STS documents GetCallerIdentity as always allowed).
NO_PERMISSION = {"sts:GetCallerIdentity"}

# Context keys no request carries: assumed, and counted.
ASSUMED_KEY_PREFIXES = ("aws:resourcetag/", "ssm:resourcetag/")

# The component of each app token, and the policy `lease iam-policy` prints for it.
# `setup` and `teardown` create and delete the stack: an operator's, checked against
# `lease iam-policy setup`. `doctor` is for a first-run user holding the launcher's
# policy, which carries its reads.
OPERATOR_COMMANDS = {"lease.setup", "lease.teardown"}


def component(app):
    if not app:
        return None
    if app in OPERATOR_COMMANDS:
        return "setup"
    if app.startswith("lease.") or app == "lease":
        return "launcher"
    if app.startswith("leased"):
        return "agent"
    if app == "bootstrap":
        return "reaper"
    return None


# ---------------------------------------------------------------- the request's side


def form(body):
    return dict(urllib.parse.parse_qsl(body or "", keep_blank_values=True))


def indexed(params, prefix):
    """`InstanceId.1`, `InstanceId.2`, … in order."""
    out = []
    n = 1
    while f"{prefix}.{n}" in params:
        out.append(params[f"{prefix}.{n}"])
        n += 1
    return out


def s3_operation(call):
    """The S3 operation of a REST call: the SDK's `x-id`, else its shape."""
    q = urllib.parse.parse_qs(call["query"], keep_blank_values=True)
    if "x-id" in q:
        return q["x-id"][0]
    method = call["method"]
    path = call["path"].strip("/")
    has_key = "/" in path
    if "uploads" in q:
        return "CreateMultipartUpload"
    if "uploadId" in q:
        return {
            "PUT": "UploadPart",
            "POST": "CompleteMultipartUpload",
            "DELETE": "AbortMultipartUpload",
            "GET": "ListParts",
        }[method]
    if "list-type" in q:
        return "ListObjectsV2"
    # Bucket sub-resources (S3 API Reference: the request's URI of each).
    sub = {
        ("GET", "lifecycle"): "GetBucketLifecycleConfiguration",
        ("PUT", "lifecycle"): "PutBucketLifecycleConfiguration",
        ("DELETE", "lifecycle"): "DeleteBucketLifecycle",
        ("GET", "tagging"): "GetBucketTagging",
        ("PUT", "tagging"): "PutBucketTagging",
        ("GET", "encryption"): "GetBucketEncryption",
        ("PUT", "encryption"): "PutBucketEncryption",
        ("GET", "publicAccessBlock"): "GetPublicAccessBlock",
        ("PUT", "publicAccessBlock"): "PutPublicAccessBlock",
        ("GET", "ownershipControls"): "GetBucketOwnershipControls",
        ("PUT", "ownershipControls"): "PutBucketOwnershipControls",
        ("GET", "versions"): "ListObjectVersions",
        ("POST", "delete"): "DeleteObjects",
    }
    if not has_key:
        for (m, name), op in sub.items():
            if m == method and name in q:
                return op
    if method == "HEAD":
        return "HeadObject" if has_key else "HeadBucket"
    if method == "GET":
        return "GetObject" if has_key else "ListObjects"
    if method == "PUT":
        return "PutObject" if has_key else "CreateBucket"
    if method == "DELETE":
        return "DeleteObject" if has_key else "DeleteBucket"
    if method == "POST" and "delete" in q:
        return "DeleteObjects"
    return f"{method}?"


def scheduler_operation(call):
    """EventBridge Scheduler's REST shapes (its API Reference)."""
    method, path = call["method"], call["path"]
    parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
    q = urllib.parse.parse_qs(call["query"])
    body = call.get("body") or ""
    try:
        in_body = json.loads(body).get("GroupName") if body.strip().startswith("{") else None
    except ValueError:
        in_body = None
    # The group is in the query (Get, Delete, List) or the body (Create, Update).
    group = in_body or q.get("groupName", ["default"])[0]
    values = {"GroupName": group}
    if parts[0] == "schedules":
        if len(parts) == 1:
            return "ListSchedules", values
        values["ScheduleName"] = parts[1]
        return {
            "GET": "GetSchedule",
            "POST": "CreateSchedule",
            "PUT": "UpdateSchedule",
            "DELETE": "DeleteSchedule",
        }[method], values
    if parts[0] == "schedule-groups":
        if len(parts) == 1:
            return "ListScheduleGroups", values
        values["GroupName"] = parts[1]
        return {
            "GET": "GetScheduleGroup",
            "POST": "CreateScheduleGroup",
            "DELETE": "DeleteScheduleGroup",
        }[method], values
    return f"{method} {path}", values


def lambda_operation(call):
    """Lambda's REST shapes (its API Reference): the operation and the function."""
    method = call["method"]
    parts = [urllib.parse.unquote(p) for p in call["path"].strip("/").split("/")]
    body = call.get("body") or ""
    if len(parts) >= 2 and parts[1] == "functions":
        if len(parts) == 2:
            name = json.loads(body).get("FunctionName", "") if body.strip() else ""
            return ("CreateFunction" if method == "POST" else "ListFunctions"), name
        name = parts[2].rsplit(":", 1)[-1] if parts[2].startswith("arn:") else parts[2]
        tail = parts[3] if len(parts) > 3 else ""
        op = {
            ("GET", ""): "GetFunction",
            ("DELETE", ""): "DeleteFunction",
            ("GET", "configuration"): "GetFunctionConfiguration",
            ("PUT", "configuration"): "UpdateFunctionConfiguration",
            ("PUT", "code"): "UpdateFunctionCode",
            ("POST", "invocations"): "InvokeFunction",
            ("POST", "policy"): "AddPermission",
            ("GET", "policy"): "GetPolicy",
        }.get((method, tail), f"{method} {call['path']}")
        return op, name
    return f"{method} {call['path']}", ""


def json_body(call):
    body = call.get("body") or ""
    try:
        return json.loads(body) if body.strip().startswith("{") else {}
    except ValueError:
        return {}


def pass_role(role_arn, service, values):
    """Handing a role to a service (a function's execution role, a schedule's target
    role) needs iam:PassRole on it (IAM User Guide, "Granting a user permissions to
    pass a role to an AWS service")."""
    return Need("iam:PassRole", dict(values), {"iam:passedtoservice": service}, role_arn)


def queue_name_of(url):
    return url.rstrip("/").rsplit("/", 1)[-1]


class Need:
    """One (action, resource, context) a call needs allowed."""

    def __init__(self, action, values, context=None, resource=None):
        self.action = action
        self.values = values
        self.context = context or {}
        self.resource = resource  # set when the call names it itself

    def __repr__(self):
        return f"{self.action} on {self.resource}"


def run_instances_needs(p, call_values):
    """RunInstances, and what it implies (EC2 User Guide, "Grant permission to tag
    resources during creation"; IAM User Guide, "Granting a user permissions to pass a
    role to an AWS service")."""
    tags = defaultdict(dict)
    n = 1
    while f"TagSpecification.{n}.ResourceType" in p:
        rtype = p[f"TagSpecification.{n}.ResourceType"]
        m = 1
        while f"TagSpecification.{n}.Tag.{m}.Key" in p:
            tags[rtype][p[f"TagSpecification.{n}.Tag.{m}.Key"]] = p.get(
                f"TagSpecification.{n}.Tag.{m}.Value", ""
            )
            m += 1
        n += 1
    every_tag = {}
    for t in tags.values():
        every_tag.update(t)
    request_tags = {f"aws:requesttag/{k.lower()}": v for k, v in every_tag.items()}
    request_tags["aws:tagkeys"] = list(every_tag)
    spot = p.get("InstanceMarketOptions.MarketType") == "spot"
    image = p.get("ImageId", "")
    resources = {
        "instance": f"arn:{PARTITION}:ec2:{REGION}:{ACCOUNT}:instance/*",
        "volume": f"arn:{PARTITION}:ec2:{REGION}:{ACCOUNT}:volume/*",
        "network-interface": f"arn:{PARTITION}:ec2:{REGION}:{ACCOUNT}:network-interface/*",
        "security-group": f"arn:{PARTITION}:ec2:{REGION}:{ACCOUNT}:security-group/*",
        "subnet": f"arn:{PARTITION}:ec2:{REGION}:{ACCOUNT}:subnet/*",
        "image": f"arn:{PARTITION}:ec2:{REGION}::image/"
        + (image if image.startswith("ami-") else "*"),
    }
    if p.get("KeyName"):
        resources["key-pair"] = f"arn:{PARTITION}:ec2:{REGION}:{ACCOUNT}:key-pair/{p['KeyName']}"
    if spot:
        resources["spot-instances-request"] = (
            f"arn:{PARTITION}:ec2:{REGION}:{ACCOUNT}:spot-instances-request/*"
        )
    needs = []
    for rtype, arn in resources.items():
        # aws:RequestTag is what the request tags; IAM evaluates it on every resource
        # the action creates.
        ctx = dict(request_tags) if rtype in (
            "instance",
            "volume",
            "spot-instances-request",
            "network-interface",
        ) else {}
        needs.append(Need("ec2:RunInstances", call_values, ctx, arn))
    for rtype, t in tags.items():
        ctx = {f"aws:requesttag/{k.lower()}": v for k, v in t.items()}
        ctx["aws:tagkeys"] = list(t)
        ctx["ec2:createaction"] = "RunInstances"
        needs.append(Need("ec2:CreateTags", call_values, ctx, resources.get(rtype, "*")))
    profile = p.get("IamInstanceProfile.Name") or p.get("IamInstanceProfile.Arn", "").rsplit("/", 1)[-1]
    if profile:
        # lease names the role after its instance profile (lease_common::stack).
        needs.append(
            Need(
                "iam:PassRole",
                call_values,
                {"iam:passedtoservice": "ec2.amazonaws.com"},
                f"arn:{PARTITION}:iam::{ACCOUNT}:role/{profile}",
            )
        )
    if image.startswith("resolve:ssm:"):
        name = image[len("resolve:ssm:"):].lstrip("/")
        needs.append(
            Need(
                "ssm:GetParameters",
                call_values,
                {},
                f"arn:{PARTITION}:ssm:{REGION}::parameter/{name}",
            )
        )
    return needs


def needs_of(call):
    """What one call must be allowed: a list of Need."""
    service = call["service"]
    values = {"Partition": PARTITION, "Region": REGION, "Account": ACCOUNT}
    ctx = {}
    app = call.get("app") or ""
    if app.startswith("leased.i-"):
        values["SourceInstanceId"] = app.split(".", 1)[1]
        ctx["ec2:sourceinstancearn"] = (
            f"arn:{PARTITION}:ec2:{REGION}:{ACCOUNT}:instance/{values['SourceInstanceId']}"
        )
    body = call.get("body") or ""
    if service == "s3":
        op = s3_operation(call)
        path = urllib.parse.unquote(call["path"]).lstrip("/")
        bucket, _, key = path.partition("/")
        values["BucketName"] = bucket
        if key:
            values["ObjectName"] = key
        q = urllib.parse.parse_qs(call["query"])
        if "prefix" in q:
            ctx["s3:prefix"] = q["prefix"][0]
        elif op in ("ListObjectsV2", "ListObjects", "ListObjectVersions"):
            ctx["s3:prefix"] = ""
        if op == "DeleteObjects":
            # Its keys (and versions) are in the body, which the log leaves out: every
            # object of the bucket, current and noncurrent (S3 API Reference,
            # DeleteObjects, "Permissions").
            values["ObjectName"] = "*"
            return [Need("s3:DeleteObject", dict(values), ctx),
                    Need("s3:DeleteObjectVersion", dict(values), ctx)]
        return [Need(f"s3:{op}", values, ctx)]
    if service == "scheduler":
        op, v = scheduler_operation(call)
        values.update(v)
        needs = [Need(f"scheduler:{op}", values, ctx)]
        role = json_body(call).get("Target", {}).get("RoleArn")
        if role:
            needs.append(pass_role(role, "scheduler.amazonaws.com", values))
        return needs
    if service == "lambda":
        op, name = lambda_operation(call)
        values["FunctionName"] = name
        needs = [Need(f"lambda:{op}", values, ctx)]
        role = json_body(call).get("Role")
        if role:
            needs.append(pass_role(role, "lambda.amazonaws.com", values))
        return needs
    service = IAM_PREFIX.get(service, service)
    action = call["action"]
    if "/operation/" in call.get("path", ""):
        # Smithy RPC v2 CBOR (CloudWatch): the operation is the path's last segment.
        action = call["path"].rsplit("/", 1)[-1]
    if call.get("target"):
        params = json.loads(body) if body.strip().startswith("{") else {}
    else:
        params = form(body)
    if service == "servicequotas":
        values["ServiceCode"] = params.get("ServiceCode", "")
        values["QuotaCode"] = params.get("QuotaCode", "")
    elif service == "iam":
        if "RoleName" in params:
            values["RoleNameWithPath"] = params["RoleName"]
        if "InstanceProfileName" in params:
            values["InstanceProfileNameWithPath"] = params["InstanceProfileName"]
            if action == "AddRoleToInstanceProfile" or action == "RemoveRoleFromInstanceProfile":
                # Acts on the profile; the role is named only to be put in it.
                values.pop("RoleNameWithPath", None)
        if "PolicySourceArn" in params:
            return [Need(f"iam:{action}", values, ctx, params["PolicySourceArn"])]
    elif service == "logs":
        if "logGroupName" in params or "LogGroupName" in params:
            values["LogGroupName"] = params.get("logGroupName") or params["LogGroupName"]
    elif service == "sqs":
        if "QueueUrl" in params:
            values["QueueName"] = queue_name_of(params["QueueUrl"])
        if "QueueName" in params:
            values["QueueName"] = params["QueueName"]
    elif service == "sns":
        if "TopicArn" in params:
            values["TopicName"] = params["TopicArn"].rsplit(":", 1)[-1]
        if "Name" in params and action == "CreateTopic":
            values["TopicName"] = params["Name"]
        if "ResourceArn" in params:
            values["TopicName"] = params["ResourceArn"].rsplit(":", 1)[-1]
    elif service == "dynamodb":
        if "TableName" in params:
            values["TableName"] = params["TableName"]
        if "ResourceArn" in params:
            values["TableName"] = params["ResourceArn"].rsplit("/", 1)[-1]
    elif service == "ssm":
        if "Name" in params:
            name = params["Name"].lstrip("/")
            values["ParameterNameWithoutLeadingSlash"] = name
            if name.startswith("aws/service/"):
                # AWS's public parameters belong to no account: their ARN has none.
                return [Need(f"ssm:{action}", values, ctx,
                             f"arn:{PARTITION}:ssm:{REGION}::parameter/{name}")]
    elif service == "ec2":
        if action == "RunInstances":
            return run_instances_needs(params, values)
        ids = indexed(params, "InstanceId") or indexed(params, "ResourceId")
        if action == "CreateTags":
            keys = []
            n = 1
            while f"Tag.{n}.Key" in params:
                keys.append(params[f"Tag.{n}.Key"])
                ctx[f"aws:requesttag/{params[f'Tag.{n}.Key'].lower()}"] = params.get(
                    f"Tag.{n}.Value", ""
                )
                n += 1
            ctx["aws:tagkeys"] = keys
        if ids:
            return [
                Need(
                    f"ec2:{action}",
                    dict(values, InstanceId=i),
                    dict(ctx),
                    f"arn:{PARTITION}:ec2:{REGION}:{ACCOUNT}:instance/{i}",
                )
                for i in ids
            ]
    return [Need(f"{service}:{action}", values, ctx)]


_ARN_FORMATS = {}


def resource_arns(action):
    """The resource ARN formats the Service Authorization Reference lists for an
    action (policy_sentry's database), `*` when it lists none."""
    if action not in _ARN_FORMATS:
        service, name = action.split(":", 1)
        data = get_action_data(service, name) or {}
        formats = [d["resource_arn_format"] for d in data.get(service, [])]
        _ARN_FORMATS[action] = formats
    return _ARN_FORMATS[action]


def fill(fmt, values):
    """The format with every `${Name}` filled from values, or None when one is missing."""
    names = re.findall(r"\$\{([^}]+)\}", fmt)
    if any(n not in values for n in names):
        return None
    out = fmt
    for n in names:
        out = out.replace("${" + n + "}", values[n])
    return out


def resolve(need):
    """Sets need.resource from the reference's ARN formats; returns False when the
    action is unknown to the reference."""
    formats = resource_arns(need.action)
    if not formats:
        return False
    if need.resource is None:
        filled = [fill(f, need.values) for f in formats if f != "*"]
        filled = [f for f in filled if f]
        # Access points are not how lease addresses S3.
        filled = [f for f in filled if ":accesspoint/" not in f]
        need.resource = filled[0] if filled else "*"
    return True


# ---------------------------------------------------------------- the policy's side


def as_list(v):
    return v if isinstance(v, list) else [v]


def glob_match(pattern, value, case=True):
    """IAM's wildcards: `*` any run of characters, `?` one character."""
    if not case:
        pattern, value = pattern.lower(), value.lower()
    regex = "".join(
        ".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern
    )
    return re.fullmatch(regex, value, re.DOTALL) is not None


def substitute(text, need):
    """The policy variables that apply to this request: `${ec2:InstanceID}` is the
    target instance's id (a key of the target, Service Authorization Reference)."""
    subs = {}
    if "InstanceId" in need.values:
        subs["ec2:InstanceID"] = need.values["InstanceId"]
    out = text
    for var in re.findall(r"\$\{([^}]+)\}", text):
        if var in subs:
            out = out.replace("${" + var + "}", subs[var])
        else:
            # Unknown here (e.g. ${aws:userid}): matches nothing, as an absent key does.
            out = out.replace("${" + var + "}", "\x00")
    return out


def condition_holds(op, key, wanted, need, assumed):
    key_l = key.lower()
    if key_l.startswith(ASSUMED_KEY_PREFIXES):
        assumed[key] += 1
        return True
    present = key_l in need.context
    value = need.context.get(key_l)
    wanted = [substitute(w, need) for w in as_list(wanted)]
    if op.startswith("ForAllValues:"):
        inner = op.split(":", 1)[1]
        values = as_list(value) if present else []
        return all(condition_holds(inner, key, wanted, _Single(v, need), assumed)
                   for v in values)
    if not present:
        return False
    values = as_list(value)
    if op in ("StringEquals", "ArnEquals"):
        return any(v == w for v in values for w in wanted)
    if op in ("StringLike", "ArnLike"):
        return any(glob_match(w, v) for v in values for w in wanted)
    if op == "StringEqualsIgnoreCase":
        return any(v.lower() == w.lower() for v in values for w in wanted)
    raise SystemExit(f"iam_check: condition operator {op} is not modelled")


class _Single:
    """A need seen with one value of a multivalued key (ForAllValues)."""

    def __init__(self, value, need):
        self.values = need.values
        self.context = {k: value for k in need.context}


def allowed_by(policy, need, assumed):
    """The statements that allow this need."""
    hits = []
    for st in policy["Statement"]:
        if st.get("Effect") != "Allow":
            continue
        if not any(glob_match(a, need.action, case=False) for a in as_list(st["Action"])):
            continue
        if not any(glob_match(substitute(r, need), need.resource) for r in as_list(st["Resource"])):
            continue
        local = Counter()
        conditions = st.get("Condition", {})
        if all(
            condition_holds(op, key, wanted, need, local)
            for op, block in conditions.items()
            for key, wanted in block.items()
        ):
            assumed.update(local)
            hits.append(st)
    return hits


def load_policies(lease):
    env = dict(os.environ, AWS_REGION=REGION, LEASE_CONFIG="/nonexistent/lease.yaml")
    out = {}
    # The agents' policy as a stack that keeps Claude's API key in SSM has it: the
    # suite's Claude tasks read the key parameter (`lease setup --claude-auth api-key`).
    extra = {"agent": ["--claude-auth", "api-key"]}
    for kind, comp in [("launcher", "launcher"), ("agent", "agent"), ("reaper", "reaper"),
                       ("setup", "setup")]:
        text = subprocess.run(
            [lease, "iam-policy", kind, "--account", ACCOUNT, "--stack", "main"]
            + extra.get(kind, []),
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout
        out[comp] = json.loads(text)
    return out


# lease_common::stack's names, for the stack the policies are printed for.
MAIN = {
    "bucket": f"lease-main-{ACCOUNT}-{REGION}",
    "pool": "lease-main-pool-default",
    "dlq": "lease-main-dlq-default",
    "events": "lease-main-events",
    "bus": "lease-main-bus",
    "commands": "lease-main-commands",
    "nodes": "lease-main-nodes",
    "tasks": "lease-main-tasks",
}
STACK_NAMED = re.compile(
    r"^lease-[a-z][a-z0-9]*-(pool-.+|dlq-.+|events|bus|commands|nodes|tasks|\d{12}-[a-z0-9-]+)$"
)


def stack_kind(service, name):
    """Which of the stack's resources a name stands for: by the stack's naming rule,
    else (a test's own name, like `ctl` or `tasks-dlq`) by what the name says."""
    n = name.lower()
    if service == "s3":
        return "bucket"
    if service == "sqs":
        return "dlq" if "dlq" in n or "dead" in n else "events" if "event" in n else "pool"
    if service == "sns":
        return "bus" if "bus" in n or "event" in n else "commands"
    if service == "dynamodb":
        return "nodes" if "node" in n else "tasks"
    return None


def to_stack_names(need, renamed):
    """Puts the resource a call named under the main stack's name for it. A resource of
    another stack is the same grant with that stack's name; one named by a test (the
    harness makes queues, topics and buckets of its own) is checked as the stack
    resource it stands for, and counted: its action and its key or path are checked,
    its name only by kind."""
    arn = need.resource or ""
    if arn == "*" or not arn.startswith("arn:"):
        return
    parts = arn.split(":", 5)
    service, rest = parts[2], parts[5]
    if service == "s3":
        name, sep, key = rest.partition("/")
    elif service == "dynamodb" and rest.startswith("table/"):
        name, sep, key = rest[len("table/"):].partition("/")
    elif service in ("sqs", "sns"):
        name, sep, key = rest, "", ""
    elif service == "scheduler":
        # schedule-group/<group>, schedule/<group>/<name>: the stack's group is
        # `lease-<stack>`.
        kind_path, _, tail = rest.partition("/")
        group, sep, key = tail.partition("/")
        m = re.fullmatch(r"lease-[a-z][a-z0-9]*", group)
        if m and group != "lease-main":
            renamed["another stack's"] += 1
            need.resource = ":".join(parts[:5] + [f"{kind_path}/lease-main{sep}{key}"])
        return
    elif service in ("iam", "lambda", "logs"):
        # Roles, instance profiles, the reaper's function and its log group:
        # `lease-<stack>-…` (lease_common::stack).
        m = re.search(r"lease-([a-z][a-z0-9]*)-", rest)
        if m and m.group(1) != "main":
            renamed["another stack's"] += 1
            rest = rest[:m.start()] + "lease-main-" + rest[m.end():]
            need.resource = ":".join(parts[:5] + [rest])
        return
    else:
        return
    kind = stack_kind(service, name)
    if kind is None or name == MAIN[kind]:
        return
    renamed["another stack's" if STACK_NAMED.match(name) else "a test's own"] += 1
    new = MAIN[kind]
    if service == "s3":
        rest = new + sep + key
    elif service == "dynamodb":
        rest = "table/" + new + sep + key
    else:
        rest = new
    need.resource = ":".join(parts[:5] + [rest])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log_dir")
    ap.add_argument("--lease", default="target/debug/lease")
    ap.add_argument(
        "--drop",
        action="append",
        default=[],
        help="remove this action from every policy first (tests/run uses it to show the "
        "check fails when a grant the code needs is missing)",
    )
    args = ap.parse_args()
    calls = []
    for path in sorted(glob.glob(os.path.join(args.log_dir, "*.jsonl"))):
        with open(path) as f:
            calls.extend(json.loads(line) for line in f if line.strip())
    policies = load_policies(args.lease)
    for policy in policies.values():
        for st in policy["Statement"]:
            st["Action"] = [a for a in as_list(st["Action"]) if a not in args.drop]

    checked = Counter()
    skipped = Counter()
    covered = defaultdict(set)
    exercised = defaultdict(set)  # component -> {(sid, action)}
    assumed = Counter()
    failures = []
    renamed = Counter()
    signers = Counter()  # the agents' role session keys their calls were signed with
    for call in calls:
        comp = component(call.get("app"))
        if comp is None:
            skipped["the test's own calls"] += 1
            continue
        if comp == "agent":
            # The agent signs as the instance profile's role: the key must be one of
            # STS's temporary keys (`ASIA…`, IAM User Guide, "Unique identifiers");
            # moto accepts any signature, so the key is the proof the call was the role's.
            key = call.get("access_key") or ""
            if key.startswith("ASIA"):
                signers[key] += 1
            else:
                failures.append((comp, call, Need(call.get("action") or "?", {}),
                                 f"signed with {key or 'no key'!r}, not the role's session key"))
                continue
        for need in needs_of(call):
            need.action = AUTHORISED_AS.get(need.action, need.action)
            if need.action in NO_PERMISSION:
                skipped[f"{need.action} (needs no permission)"] += 1
                continue
            if not resolve(need):
                failures.append((comp, call, need, "not an action in the Service Authorization Reference"))
                continue
            to_stack_names(need, renamed)
            policy = policies[comp]
            hits = allowed_by(policy, need, assumed)
            checked[comp] += 1
            if hits:
                covered[comp].add(need.action)
                for st in hits:
                    for a in as_list(st["Action"]):
                        if glob_match(a, need.action, case=False):
                            exercised[comp].add((st.get("Sid", "?"), a))
            else:
                failures.append((comp, call, need, "no statement allows it"))

    print("recorded-calls check (tests/iam_check.py)")
    print(f"  calls logged: {len(calls)}")
    for comp in ("agent", "launcher", "reaper", "setup"):
        print(
            f"  {comp}: {checked[comp]} needs checked, "
            f"{len(covered[comp])} actions covered: {', '.join(sorted(covered[comp]))}"
        )
    print(
        f"  agent calls signed by an assumed role's session: {sum(signers.values())} "
        f"({len(signers)} sessions)"
    )
    for why, n in sorted(skipped.items()):
        print(f"  not checked: {n} × {why}")
    for whose, n in sorted(renamed.items()):
        print(f"  {n} needs named {whose} resource, checked as the stack's resource of that kind")
    for key, n in sorted(assumed.items()):
        print(f"  condition key assumed true (not in any request): {key} × {n}")
    unexercised = []
    for comp, policy in policies.items():
        for st in policy["Statement"]:
            for a in as_list(st["Action"]):
                if (st.get("Sid", "?"), a) not in exercised[comp]:
                    unexercised.append(f"{comp}:{st.get('Sid', '?')}:{a}")
    print(f"  grants no test exercised: {len(unexercised)}")
    for u in unexercised:
        print(f"    {u}")
    if failures:
        print(f"FAILED: {len(failures)} call(s) not allowed by their component's policy:")
        seen = set()
        for comp, call, need, why in failures:
            key = (comp, need.action, need.resource, why)
            if key in seen:
                continue
            seen.add(key)
            print(f"  {comp} ({call.get('app')}): {need.action} on {need.resource}: {why}; "
                  f"context {need.context}")
        return 1
    print("ok: every call is allowed by its component's policy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
