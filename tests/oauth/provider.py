#!/usr/bin/env python3
"""A small OAuth 2.0 authorization server for the gateway's tests and its demo, built on
Authlib (the RFC implementations are Authlib's; this file only stores clients and tokens):

  POST /oauth/token       client credentials grant (RFC 6749 section 4.4)
  POST /oauth/introspect  token introspection (RFC 7662), for the client `gateway`
  POST /oauth/revoke      token revocation (RFC 7009), by the client the token was issued to
  GET  /.well-known/openid-configuration   where the endpoints and keys are (OIDC Discovery)
  GET  /jwks.json         the keys that sign JWT access tokens (RFC 7517)
  GET  /stats             how many introspection and JWKS calls were answered
  POST /admin/delay?ms=N  answer introspection calls N ms late (0: at once)
  POST /admin/rotate      sign with a new key from now on; the old one leaves the JWKS

Clients (client_secret_basic or client_secret_post):
  app / app-secret          scopes "read write", tokens live an hour
  short / short-secret      scope "read", tokens live 2 seconds
  jwt-app / jwt-secret      scope "read", its tokens are JWTs (RS256, RFC 9068 claims)
  gateway / gateway-secret  the resource server that introspects

    python3 provider.py PORT
Listens on 127.0.0.1:PORT, prints "ready" once it does.
"""

import sys
import threading
import time

from authlib.common.security import generate_token
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.models import ClientMixin, TokenMixin
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from flask import Flask, jsonify, request
from joserfc import jwt
from joserfc.jwk import RSAKey
from werkzeug.serving import make_server

METHODS = ("client_secret_basic", "client_secret_post")


class Client(ClientMixin):
    def __init__(self, client_id, secret, scope, lifetime):
        self.client_id = client_id
        self.secret = secret
        self.scope = scope
        self.lifetime = lifetime

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        allowed = self.scope.split()
        if not scope:
            return self.scope
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri):
        return False

    def check_client_secret(self, client_secret):
        return client_secret == self.secret

    def check_endpoint_auth_method(self, method, endpoint):
        return method in METHODS

    def check_response_type(self, response_type):
        return False

    def check_grant_type(self, grant_type):
        return grant_type == "client_credentials"


class Token(TokenMixin):
    def __init__(self, client, access_token, scope, expires_in):
        self.client = client
        self.access_token = access_token
        self.scope = scope
        self.issued_at = int(time.time())
        self.expires_in = expires_in
        self.revoked = False

    def check_client(self, client):
        return client.client_id == self.client.client_id

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return self.expires_in

    def is_expired(self):
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self):
        return self.revoked

    def get_user(self):
        return None

    def get_client(self):
        return self.client


CLIENTS = {
    c.client_id: c
    for c in [
        Client("app", "app-secret", "read write", 3600),
        Client("short", "short-secret", "read", 2),
        Client("gateway", "gateway-secret", "", 3600),
        Client("jwt-app", "jwt-secret", "read", 3600),
    ]
}
TOKENS = {}
STATE = {"introspections": 0, "jwks": 0, "delay_ms": 0, "kid": 0}
LOCK = threading.Lock()
KEY = None


def new_key():
    global KEY
    with LOCK:
        STATE["kid"] += 1
        KEY = RSAKey.generate_key(
            2048, parameters={"kid": f"k{STATE['kid']}", "use": "sig", "alg": "RS256"}
        )


def access_token(client, grant_type, user=None, scope=None):
    if client.client_id != "jwt-app":
        return generate_token(42)
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": client.client_id,
        "client_id": client.client_id,
        "aud": "api",
        "scope": scope or client.scope,
        "iat": now,
        "exp": now + client.lifetime,
        "jti": generate_token(16),
    }
    with LOCK:
        key = KEY
    return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "at+jwt"}, claims, key)


def save_token(token, req):
    with LOCK:
        TOKENS[token["access_token"]] = Token(
            req.client, token["access_token"], token.get("scope", ""), token["expires_in"]
        )


def find_token(token_string, token_type_hint=None):
    with LOCK:
        return TOKENS.get(token_string)


class Introspection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = list(METHODS)

    def query_token(self, token_string, token_type_hint):
        return find_token(token_string)

    def check_permission(self, token, client, request):
        return client.client_id == "gateway"

    def introspect_token(self, token):
        return {
            "active": True,
            "client_id": token.client.client_id,
            "token_type": "Bearer",
            "scope": token.scope,
            "sub": token.client.client_id,
            "iss": ISSUER,
            "exp": token.issued_at + token.expires_in,
            "iat": token.issued_at,
        }


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = list(METHODS)

    def query_token(self, token_string, token_type_hint):
        return find_token(token_string)

    def revoke_token(self, token, request):
        token.revoked = True


app = Flask(__name__)
server = AuthorizationServer(app, query_client=CLIENTS.get, save_token=save_token)
server.register_token_generator(
    "default",
    BearerTokenGenerator(
        access_token_generator=access_token,
        expires_generator=lambda client, grant_type: client.lifetime,
    ),
)
server.register_grant(grants.ClientCredentialsGrant)
server.register_endpoint(Introspection)
server.register_endpoint(Revocation)
ISSUER = ""


@app.post("/oauth/token")
def token():
    return server.create_token_response()


@app.post("/oauth/introspect")
def introspect():
    delay = STATE["delay_ms"]
    if delay:
        time.sleep(delay / 1000)
    with LOCK:
        STATE["introspections"] += 1
    return server.create_endpoint_response(Introspection.ENDPOINT_NAME)


@app.post("/oauth/revoke")
def revoke():
    return server.create_endpoint_response(Revocation.ENDPOINT_NAME)


@app.get("/.well-known/openid-configuration")
def discovery():
    return jsonify(
        issuer=ISSUER,
        jwks_uri=f"{ISSUER}/jwks.json",
        token_endpoint=f"{ISSUER}/oauth/token",
        introspection_endpoint=f"{ISSUER}/oauth/introspect",
        revocation_endpoint=f"{ISSUER}/oauth/revoke",
        grant_types_supported=["client_credentials"],
        token_endpoint_auth_methods_supported=list(METHODS),
    )


@app.get("/jwks.json")
def jwks():
    with LOCK:
        STATE["jwks"] += 1
        return jsonify(keys=[KEY.as_dict(private=False)])


@app.post("/admin/rotate")
def rotate():
    new_key()
    return jsonify(STATE)


@app.get("/stats")
def stats():
    with LOCK:
        return jsonify(STATE)


@app.post("/admin/delay")
def delay():
    STATE["delay_ms"] = int(request.args.get("ms", "0"))
    return jsonify(STATE)


def main():
    global ISSUER
    port = int(sys.argv[1])
    ISSUER = f"http://127.0.0.1:{port}"
    new_key()
    httpd = make_server("127.0.0.1", port, app, threaded=True)
    print("ready", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
