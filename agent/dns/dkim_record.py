"""DKIM in DNS: is the key record at selector._domainkey published and usable?

Three cases, by how the domain's mail is signed: by a local key (the record must
match it), by Elastx (unsigned = "send": Elastx's own record must be there), or
not at all (unsigned = "reject": a key must be made first).
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence

from agent.dns.result import FAIL, PASS, CheckResult, verdict
from agent.dns.txt_record import parse_tags, zone_txt

ELASTX_SELECTOR = "elastx"


def _b64_bytes(value: str) -> bytes | None:
    try:
        return binascii.a2b_base64("".join(value.split()).encode())
    except (binascii.Error, ValueError):
        return None


def dkim_record_problem(txts: Sequence[str], name: str) -> tuple[dict[str, str], str]:
    """The tags of the one DKIM key record at `name`, or a reason it is not usable."""
    if not txts:
        return {}, f"no DKIM record at {name}"
    if len(txts) > 1:
        return {}, f"{len(txts)} TXT records at {name}: publish exactly one"
    tags = parse_tags(txts[0])
    if tags is None:
        return {}, f"{name}: malformed tag list"
    names = [n for n, _ in tags]
    if "v" in names and (names[0] != "v" or tags[0][1] != "DKIM1"):
        return {}, f"{name}: v=DKIM1 must come first"
    found = dict(tags)
    if "p" not in found:
        return found, f"{name}: no p= tag"
    if not "".join(found["p"].split()):
        return found, f"{name}: empty p= (the key is revoked)"
    return found, ""


def check_dkim(
    domain: str, key_domain: str, selector: str, kind: str, public_b64: str, txts: Sequence[str], fix: str
) -> CheckResult:
    """The record at selector._domainkey.key_domain against the local key (kind "rsa"|"ed25519")."""
    name = f"{selector}._domainkey.{key_domain}"
    tags, problem = dkim_record_problem(txts, name)
    fails, warns = [problem] if problem else [], []
    if not problem:
        published = tags.get("k", "rsa").lower()
        if published != kind:
            fails.append(f"{name}: k={published} but the local key is {kind}")
        elif _b64_bytes(tags["p"]) != _b64_bytes(public_b64):
            fails.append(f"{name}: p= does not match the local {kind} key")
        if "h" in tags and "sha256" not in tags["h"].lower().replace(" ", "").split(":"):
            fails.append(f"{name}: h={tags['h']} excludes sha256")
        if "y" in tags.get("t", "").lower().replace(" ", "").split(":"):
            warns.append(f"{name}: t=y (testing): receivers may ignore the signature")
    parent = f" (d={key_domain}, a parent of {domain})" if key_domain != domain else ""
    return verdict(domain, "dkim", fails, warns, f"{name} matches the local {kind} key{parent}", fix)


def check_elastx_dkim(domain: str, txts: Sequence[str]) -> CheckResult:
    """unsigned = "send": Elastx signs, so its own record must be published for this domain."""
    name = f"{ELASTX_SELECTOR}._domainkey.{domain}"
    for txt in txts:
        tags = parse_tags(txt)
        if tags and tags[0] == ("v", "DKIM1") and "".join(dict(tags).get("p", "").split()):
            return CheckResult(domain, "dkim", PASS, f"{name} present (Elastx signs this domain's mail)")
    detail = f'no Elastx DKIM record at {name} (unsigned = "send": Elastx signs this domain\'s mail)'
    fix = zone_txt(name, "v=DKIM1; k=rsa; p=<the public key exactly as given by Elastx>")
    return CheckResult(domain, "dkim", FAIL, detail, fix)


def check_no_key(domain: str) -> CheckResult:
    """unsigned = "reject": mail from a domain without a key is refused."""
    detail = (
        f"no DKIM key configured for {domain}: relay-agent dkim keygen --domain {domain} "
        "--selector SELECTOR, then add a [[dkim]] table"
    )
    fix = zone_txt(f"SELECTOR._domainkey.{domain}", "v=DKIM1; k=rsa; p=<printed by relay-agent dkim keygen>")
    return CheckResult(domain, "dkim", FAIL, detail, fix)
