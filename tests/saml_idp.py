"""A test identity provider: a key pair, SP settings trusting it, and signed SAML responses."""
from __future__ import annotations

import base64
import datetime as dt
import uuid
import zlib
from urllib.parse import parse_qs, quote_plus, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from onelogin.saml2.utils import OneLogin_Saml2_Utils

IDP = "https://idp.test.example/metadata"
NS = ('xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" '
      'xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol"')


def make_keypair(cn: str = "idp.test.example") -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=10)).sign(key, hashes.SHA256()))
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode(),
            cert.public_bytes(serialization.Encoding.PEM).decode())


def settings(base: str, cert_pem: str) -> tuple[dict, dict]:
    body = "".join(line for line in cert_pem.splitlines() if "CERTIFICATE" not in line)
    return ({"strict": True, "sp": {"entityId": f"{base}/saml/metadata",
                                    "assertionConsumerService": {"url": f"{base}/saml/acs",
                                                                 "binding": C.BINDING_HTTP_POST},
                                    "singleLogoutService": {"url": f"{base}/saml/sls",
                                                            "binding": C.BINDING_HTTP_REDIRECT},
                                    "NameIDFormat": C.NAMEID_EMAIL_ADDRESS, "x509cert": "", "privateKey": ""},
             "idp": {"entityId": IDP, "singleSignOnService": {"url": "https://idp.test.example/sso",
                                                              "binding": C.BINDING_HTTP_REDIRECT},
                     "singleLogoutService": {"url": "https://idp.test.example/slo",
                                             "binding": C.BINDING_HTTP_REDIRECT},
                     "x509cert": body}},
            # Deliberately weak files: the SP must enforce signing and algorithms anyway.
            {"security": {"wantAssertionsSigned": False, "rejectDeprecatedAlgorithm": False}})


def request_id(location: str) -> str:
    q = parse_qs(urlparse(location).query)
    xml = zlib.decompress(base64.b64decode(q["SAMLRequest"][0]), -15).decode()
    start = xml.index(' ID="') + 5
    return xml[start:xml.index('"', start)]


def _t(d: dt.datetime) -> str:
    return d.strftime("%Y-%m-%dT%H:%M:%SZ")


def assertion_xml(base: str, email: str, groups: list[str], *, in_response_to: str | None,
                  audience: str | None = None, lifetime: dt.timedelta = dt.timedelta(minutes=5),
                  offset: dt.timedelta = dt.timedelta(0), assertion_id: str | None = None,
                  name_id: str | None = None, name_id_format: str = C.NAMEID_EMAIL_ADDRESS) -> str:
    now = dt.datetime.now(dt.timezone.utc) + offset
    irt = f' InResponseTo="{in_response_to}"' if in_response_to else ""
    aid = assertion_id or "_a" + uuid.uuid4().hex
    values = "".join(f"<saml:AttributeValue>{g}</saml:AttributeValue>" for g in groups)
    return (f'<saml:Assertion xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="{aid}" Version="2.0" '
            f'IssueInstant="{_t(now)}"><saml:Issuer>{IDP}</saml:Issuer><saml:Subject>'
            f'<saml:NameID Format="{name_id_format}">{name_id or email}</saml:NameID>'
            f'<saml:SubjectConfirmation Method="urn:oasis:names:tc:SAML:2.0:cm:bearer">'
            f'<saml:SubjectConfirmationData NotOnOrAfter="{_t(now + lifetime)}" Recipient="{base}/saml/acs"{irt}/>'
            f'</saml:SubjectConfirmation></saml:Subject><saml:Conditions NotBefore="{_t(now - dt.timedelta(minutes=1))}" '
            f'NotOnOrAfter="{_t(now + lifetime)}"><saml:AudienceRestriction><saml:Audience>'
            f'{audience or base + "/saml/metadata"}</saml:Audience></saml:AudienceRestriction></saml:Conditions>'
            f'<saml:AuthnStatement AuthnInstant="{_t(now)}" SessionIndex="_s{uuid.uuid4().hex}"><saml:AuthnContext>'
            f'<saml:AuthnContextClassRef>urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport'
            f'</saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement><saml:AttributeStatement>'
            f'<saml:Attribute Name="email"><saml:AttributeValue>{email}</saml:AttributeValue></saml:Attribute>'
            f'<saml:Attribute Name="groups">{values}</saml:Attribute></saml:AttributeStatement></saml:Assertion>')


def sign(xml: str, key: str, cert: str, *, algorithm: str = C.RSA_SHA256, digest: str = C.SHA256) -> str:
    return OneLogin_Saml2_Utils.add_sign(xml, key, cert, sign_algorithm=algorithm,
                                         digest_algorithm=digest).decode().replace('<?xml version="1.0"?>', "").strip()


def wrap(base: str, assertion: str, in_response_to: str | None, prolog: str = "") -> str:
    irt = f' InResponseTo="{in_response_to}"' if in_response_to else ""
    return (f'{prolog}<samlp:Response {NS} ID="_r{uuid.uuid4().hex}" Version="2.0" '
            f'IssueInstant="{_t(dt.datetime.now(dt.timezone.utc))}" Destination="{base}/saml/acs"{irt}>'
            f'<saml:Issuer>{IDP}</saml:Issuer><samlp:Status><samlp:StatusCode '
            f'Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status>{assertion}</samlp:Response>')


def b64(xml: str) -> str:
    return base64.b64encode(xml.encode()).decode()


def logout_query(base: str, key: str, name_id: str, *, kind: str = "SAMLRequest",
                 destination: str | None = None, signed: bool = True) -> dict[str, str]:
    """An IdP's LogoutRequest (or a LogoutResponse) in the HTTP-Redirect binding, signed as the binding says:
    RSA-SHA256 over ``SAMLRequest=...&SigAlg=...``, url-encoded."""
    now = dt.datetime.now(dt.timezone.utc)
    dest = destination or f"{base}/saml/sls"
    if kind == "SAMLRequest":
        xml = (f'<samlp:LogoutRequest {NS} ID="_l{uuid.uuid4().hex}" Version="2.0" IssueInstant="{_t(now)}" '
               f'Destination="{dest}"><saml:Issuer>{IDP}</saml:Issuer>'
               f'<saml:NameID Format="{C.NAMEID_EMAIL_ADDRESS}">{name_id}</saml:NameID></samlp:LogoutRequest>')
    else:
        xml = (f'<samlp:LogoutResponse {NS} ID="_r{uuid.uuid4().hex}" Version="2.0" IssueInstant="{_t(now)}" '
               f'Destination="{dest}"><saml:Issuer>{IDP}</saml:Issuer><samlp:Status><samlp:StatusCode '
               f'Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status></samlp:LogoutResponse>')
    msg = OneLogin_Saml2_Utils.deflate_and_base64_encode(xml)
    query = {kind: msg}
    if signed:
        signed_query = f"{kind}={quote_plus(msg)}&SigAlg={quote_plus(C.RSA_SHA256)}"
        private = serialization.load_pem_private_key(key.encode(), password=None)
        signature = private.sign(signed_query.encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr,call-arg]
        query.update({"SigAlg": C.RSA_SHA256, "Signature": base64.b64encode(signature).decode()})
    return query
