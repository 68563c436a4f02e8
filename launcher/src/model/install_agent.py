#!/usr/bin/env python3
# Installs the lease agent at first boot (run by the user-data's runcmd).
#
# Only what cloud-init itself guarantees is used: python3 and its standard library.
# No AWS CLI: the instance role's credentials come from IMDSv2, and the S3 GET and
# the EC2 CreateTags call are signed here with SigV4.
#
# Steps: download the package for this machine's architecture from the stack's
# bucket, check its sha256 against the digest launch put into the user-data, then
# install it (dpkg where there is dpkg; elsewhere, e.g. Amazon Linux, unpack the
# .deb's files into place ourselves). Any failure tags the instance
# lease:status=install-failed, says why on the console and leaves nothing installed.
# Then Docker, when the image lacks it (a failure there only warns).
#
# Endpoints: the standard AWS settings AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, or
# endpoint_url in the [default] profile of the AWS config file, as the agent's SDK
# reads them; the real AWS endpoints otherwise.
import configparser
import datetime
import hashlib
import hmac
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

IMDS = "http://169.254.169.254"
TASK_USER = "@TASK_USER@"
STATUS_TAG = "@STATUS_TAG@"
FAILED = "@FAILED@"
TIMEOUT = 30


class Failure(Exception):
    pass


class Transient(Failure):
    # Worth another try: a fresh instance profile can take seconds to reach IMDS,
    # and a fresh role seconds to be allowed to read the bucket.
    pass


def retrying(step, attempts=6, pause=5):
    for n in range(1, attempts + 1):
        try:
            return step()
        except (Transient, urllib.error.URLError, OSError) as e:
            if n == attempts:
                raise
            print("install-agent: %s; trying again in %ds" % (e, pause * n), flush=True)
            time.sleep(pause * n)


def imds(path, token):
    req = urllib.request.Request(IMDS + "/latest/" + path, headers={"X-aws-ec2-metadata-token": token})
    with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
        return r.read().decode()


def imds_token():
    req = urllib.request.Request(
        IMDS + "/latest/api/token", method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "600"})
    with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
        return r.read().decode()


def identity():
    token = imds_token()
    region = imds("meta-data/placement/region", token)
    instance = imds("meta-data/instance-id", token)
    roles = imds("meta-data/iam/security-credentials/", token).split()
    if not roles:
        raise Transient("the instance has no instance profile (yet): cannot read the agent package")
    creds = json.loads(imds("meta-data/iam/security-credentials/" + roles[0], token))
    return region, instance, creds


def endpoint(service):
    for var in ("AWS_ENDPOINT_URL_" + service.upper(), "AWS_ENDPOINT_URL"):
        if os.environ.get(var):
            return os.environ[var].rstrip("/")
    path = os.environ.get("AWS_CONFIG_FILE") or os.path.join(os.path.expanduser("~"), ".aws", "config")
    cfg = configparser.ConfigParser()
    cfg.read(path)
    if cfg.has_option("default", "endpoint_url"):
        return cfg.get("default", "endpoint_url").rstrip("/")
    return None


def domain(region):
    return "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"


def sign(method, url, region, service, creds, body=b"", headers=None, now=None):
    # Returns the headers of a SigV4-signed request.
    u = urllib.parse.urlsplit(url)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    payload = hashlib.sha256(body).hexdigest()
    h = dict(headers or {})
    h.update({"host": u.netloc, "x-amz-date": amz_date, "x-amz-content-sha256": payload})
    if creds.get("Token"):
        h["x-amz-security-token"] = creds["Token"]
    names = sorted(k.lower() for k in h)
    lower = {k.lower(): str(v).strip() for k, v in h.items()}
    canonical_headers = "".join(n + ":" + lower[n] + "\n" for n in names)
    signed = ";".join(names)
    query = "&".join(sorted(
        urllib.parse.quote(k, safe="-_.~") + "=" + urllib.parse.quote(v, safe="-_.~")
        for k, v in urllib.parse.parse_qsl(u.query, keep_blank_values=True)))
    request = "\n".join([method, u.path or "/", query, canonical_headers, signed, payload])
    scope = day + "/" + region + "/" + service + "/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(request.encode()).hexdigest()])
    key = ("AWS4" + creds["SecretAccessKey"]).encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    h["Authorization"] = ("AWS4-HMAC-SHA256 Credential=" + creds["AccessKeyId"] + "/" + scope
                          + ", SignedHeaders=" + signed + ", Signature=" + signature)
    return h


def s3_url(bucket, key, region):
    quoted = urllib.parse.quote(key, safe="/-_.~")
    custom = endpoint("s3")
    if custom:
        # An endpoint of our own (an emulator) takes path-style addressing, as the
        # agent's SDK uses it there.
        return custom + "/" + bucket + "/" + quoted
    return "https://" + bucket + ".s3." + region + "." + domain(region) + "/" + quoted


def download(bucket, key, region, creds, dest):
    url = s3_url(bucket, key, region)
    req = urllib.request.Request(url, headers=sign("GET", url, region, "s3", creds))
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r, open(dest, "wb") as f:
            while True:
                chunk = r.read(1 << 20)
                if not chunk:
                    break
                digest.update(chunk)
                f.write(chunk)
    except urllib.error.HTTPError as e:
        raise Transient("GET s3://%s/%s: HTTP %d %s" % (bucket, key, e.code, e.read()[:300]))
    return digest.hexdigest()


def tag_failed(region, instance, creds, reason):
    url = endpoint("ec2") or ("https://ec2." + region + "." + domain(region))
    url = url + "/"
    body = urllib.parse.urlencode({
        "Action": "CreateTags", "Version": "2016-11-15", "ResourceId.1": instance,
        "Tag.1.Key": STATUS_TAG, "Tag.1.Value": FAILED,
    }).encode()
    headers = sign("POST", url, region, "ec2", creds, body,
                   {"content-type": "application/x-www-form-urlencoded; charset=utf-8"})
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
        r.read()


def machine_arch():
    # Debian's name for this machine's architecture, as the package is named.
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def run(*args):
    print("install-agent: " + " ".join(args), flush=True)
    subprocess.run(args, check=True)


def create_task_user():
    # The unprivileged user tasks run as, in the docker group when there is one
    # (what the package's postinst does on Debian).
    if subprocess.run(["getent", "passwd", TASK_USER], stdout=subprocess.DEVNULL).returncode != 0:
        run("useradd", "--system", "--user-group", "--create-home", "--home-dir",
            "/home/" + TASK_USER, "--shell", "/bin/bash", TASK_USER)
    if subprocess.run(["getent", "group", "docker"], stdout=subprocess.DEVNULL).returncode == 0:
        run("usermod", "--append", "--groups", "docker", TASK_USER)


def ar_members(data):
    # The members of an ar archive (a .deb) as {name: bytes}.
    if data[:8] != b"!<arch>\n":
        raise Failure("the package is not a .deb (no ar header)")
    out, pos = {}, 8
    while pos + 60 <= len(data):
        head = data[pos:pos + 60]
        name = head[:16].decode().strip().rstrip("/")
        size = int(head[48:58].decode().strip())
        out[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)
    return out


def unpack_deb(deb, root="/"):
    # Installs the .deb's files under root without dpkg: for images without it
    # (Amazon Linux). An existing config file is kept (cloud-init wrote it first); on any
    # error every file written is removed again. Returns the files written.
    with open(deb, "rb") as f:
        members = ar_members(f.read())
    data = next((v for k, v in members.items() if k.startswith("data.tar")), None)
    if data is None:
        raise Failure("the package has no data.tar member")
    written = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for m in tar.getmembers():
                rel = os.path.normpath(m.name).lstrip("./")
                if not rel or rel.startswith(".."):
                    continue
                dest = os.path.join(root, rel)
                if m.isdir():
                    os.makedirs(dest, exist_ok=True)
                    continue
                if os.path.lexists(dest) and rel.startswith("etc/"):
                    continue
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                if m.issym():
                    if os.path.lexists(dest):
                        os.remove(dest)
                    os.symlink(m.linkname, dest)
                elif m.isfile():
                    src = tar.extractfile(m)
                    tmp = dest + ".lease-new"
                    try:
                        with open(tmp, "wb") as out:
                            shutil.copyfileobj(src, out)
                        os.chmod(tmp, m.mode & 0o7777)
                        os.replace(tmp, dest)
                    except Exception:
                        if os.path.lexists(tmp):
                            os.remove(tmp)
                        raise
                else:
                    continue
                written.append(dest)
    except Exception:
        for path in written:
            try:
                os.remove(path)
            except OSError:
                pass
        raise
    return written


def install(deb):
    if shutil.which("dpkg"):
        # apt resolves the package's dependencies; the config cloud-init wrote wins
        # over the packaged one without a question (which would fail the install).
        try:
            run("apt-get", "install", "-y", "--no-install-recommends",
                "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold", deb)
        except subprocess.CalledProcessError:
            subprocess.run(["dpkg", "--purge", "leased"])
            raise
        return
    # No dpkg (Amazon Linux and other rpm images): the agent's dependencies from the
    # image's own repositories, then the files; the unit is enabled by runcmd next.
    pm = shutil.which("dnf") or shutil.which("yum")
    if pm and not shutil.which("tmux"):
        run(pm, "install", "-y", "tmux")
    written = unpack_deb(deb)
    try:
        create_task_user()
        run("systemctl", "daemon-reload")
    except Exception:
        # Only files this install wrote: a config that was there is never in the list.
        for path in written:
            try:
                os.remove(path)
            except OSError:
                pass
        raise


def ensure_docker():
    # Container tasks (--image) need Docker, which plain Debian/Ubuntu and Amazon Linux
    # images lack: install it from the image's own repositories and start it, and put
    # the task user (created by now) in its group. Failing here only warns: the agent
    # is installed and still enforces the deadline, and shell and claude tasks work.
    if shutil.which("docker"):
        return True
    try:
        if shutil.which("dpkg"):
            os.environ.setdefault("DEBIAN_FRONTEND", "noninteractive")
            try:
                run("apt-get", "install", "-y", "docker.io")
            except subprocess.CalledProcessError:
                # A fresh cloud image may have no package lists yet.
                run("apt-get", "update")
                run("apt-get", "install", "-y", "docker.io")
        else:
            pm = shutil.which("dnf") or shutil.which("yum")
            if not pm:
                raise Failure("neither apt-get nor dnf is here to install it with")
            run(pm, "install", "-y", "docker")
        run("systemctl", "enable", "--now", "docker")
        run("usermod", "--append", "--groups", "docker", TASK_USER)
    except Exception as e:
        print("install-agent: WARNING: could not install Docker (%s): --image tasks will fail "
              "on this instance until Docker is installed; shell and claude tasks work" % e,
              file=sys.stderr, flush=True)
        return False
    return True


def main(argv):
    bucket, key, want, arch = argv[1:5]
    if shutil.which("leased"):
        print("install-agent: leased is already installed (the image carries it)", flush=True)
        return 0
    region = instance = creds = None
    try:
        region, instance, creds = retrying(identity)
        if machine_arch() != arch:
            raise Failure("this machine is %s but the package is for %s" % (machine_arch(), arch))
        work = tempfile.mkdtemp(prefix="lease-install-")
        try:
            deb = os.path.join(work, os.path.basename(key))
            got = retrying(lambda: download(bucket, key, region, creds, deb))
            if got != want:
                raise Failure("s3://%s/%s has sha256 %s, expected %s: refusing to install it"
                              % (bucket, key, got, want))
            print("install-agent: s3://%s/%s verified (sha256 %s)" % (bucket, key, got), flush=True)
            install(deb)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except Exception as e:
        print("install-agent: FAILED: %s" % e, file=sys.stderr, flush=True)
        if creds is not None:
            try:
                tag_failed(region, instance, creds, str(e))
            except Exception as t:
                print("install-agent: could not tag the instance: %s" % t, file=sys.stderr, flush=True)
        return 1
    print("install-agent: leased installed", flush=True)
    # The agent first, so the deadline is enforced while Docker installs (a minute on
    # a fresh image; longer when its mirrors are slow). cloud-init's next step starts
    # it again, which is harmless, if this fails.
    try:
        run("systemctl", "enable", "--now", "leased.service")
    except Exception as e:
        print("install-agent: WARNING: could not start leased yet: %s" % e, file=sys.stderr, flush=True)
    ensure_docker()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
