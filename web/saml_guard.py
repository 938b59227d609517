"""Checks on a SAML response made before python3-saml sees it.

The library verifies signatures; these checks shrink what reaches it: no
DOCTYPE (entity expansion, XXE), no XML comments inside the assertion (the
NameID comment-truncation class of bugs), and only the two signature
transforms a SAML signature needs (enveloped-signature and exclusive c14n
without comments) — other transforms (XSLT, XPath, c14n with comments) are
an attack surface with no legitimate use here.
"""
from __future__ import annotations

import base64
import binascii

from lxml import etree

MAX_RESPONSE_BYTES = 256 * 1024
ALLOWED_TRANSFORMS = frozenset({
    "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
    "http://www.w3.org/2001/10/xml-exc-c14n#",
})
ALLOWED_C14N = frozenset({"http://www.w3.org/2001/10/xml-exc-c14n#"})
DS = "{http://www.w3.org/2000/09/xmldsig#}"
ASSERTION = "{urn:oasis:names:tc:SAML:2.0:assertion}Assertion"


class SamlRejected(Exception):
    """The response is refused before signature validation; the message is safe to log."""


class SamlTooLarge(SamlRejected):
    """The response is over MAX_RESPONSE_BYTES: a 413, not a failed login."""


_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                          huge_tree=False, remove_comments=False)


def decode_response(b64: str) -> bytes:
    if len(b64) > MAX_RESPONSE_BYTES * 4 // 3 + 4:
        raise SamlTooLarge("SAMLResponse too large")
    try:
        xml = base64.b64decode(b64, validate=False)
    except (binascii.Error, ValueError):
        raise SamlRejected("SAMLResponse is not base64") from None
    if len(xml) > MAX_RESPONSE_BYTES:
        raise SamlTooLarge("SAMLResponse too large")
    return xml


def inspect(xml: bytes) -> None:
    """Raise SamlRejected unless the document passes the pre-checks."""
    head = xml[:4096].upper()
    if b"<!DOCTYPE" in head or b"<!ENTITY" in xml.upper():
        raise SamlRejected("DOCTYPE or entity declarations are not allowed")
    try:
        root = etree.fromstring(xml, parser=_PARSER)
    except etree.XMLSyntaxError:
        raise SamlRejected("SAMLResponse is not well-formed XML") from None
    if root.getroottree().docinfo.doctype:
        raise SamlRejected("DOCTYPE is not allowed")
    for t in root.iter(f"{DS}Transform"):
        if t.get("Algorithm") not in ALLOWED_TRANSFORMS:
            raise SamlRejected(f"signature transform not allowed: {t.get('Algorithm')}")
    for c in root.iter(f"{DS}CanonicalizationMethod"):
        if c.get("Algorithm") not in ALLOWED_C14N:
            raise SamlRejected(f"canonicalization not allowed: {c.get('Algorithm')}")
    for a in root.iter(ASSERTION):
        if any(isinstance(n, etree._Comment) for n in a.iter()):
            raise SamlRejected("comments inside the assertion are not allowed")
