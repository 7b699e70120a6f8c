"""A made-up OCI identity for development against the emulator.

``oci-genai-batch emulator --write-dev-config DIR`` writes a fresh API key and an OCI config
profile into DIR; start the emulator with ``--oci-config DIR/oci_config`` and point runs at
the same file, and every request is signed and verified exactly as OCI would.
"""

from __future__ import annotations

import configparser
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

TENANCY = "ocid1.tenancy.oc1..aaaaemulatortenancy"
USER = "ocid1.user.oc1..aaaaemulatoruser"
COMPARTMENT = "ocid1.compartment.oc1..aaaaemulatorcompartment"
REGION = "us-chicago-1"
CONFIG_NAME = "oci_config"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def fingerprint(key: rsa.RSAPrivateKey) -> str:
    """OCI's fingerprint of an API key: MD5 of the DER public key, colon-separated hex."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return ":".join(f"{b:02x}" for b in hashlib.md5(der, usedforsecurity=False).digest())


def write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)


def write_profile(config_path: Path, profile: str, values: dict[str, str]) -> None:
    """Add or replace ``profile`` in the config file (other profiles are kept)."""
    parser = configparser.ConfigParser(interpolation=None)
    if config_path.exists():
        parser.read(config_path)
    if profile == "DEFAULT":
        parser["DEFAULT"] = values
    else:
        parser[profile] = values
    with config_path.open("w") as fh:
        parser.write(fh)


def write_dev_config(
    directory: str | os.PathLike[str], profile: str = "DEFAULT"
) -> tuple[str, str]:
    """Write a new RSA-2048 key ``key_<profile>.pem`` and the ``profile`` section of
    ``<directory>/oci_config`` (an emulator user and tenancy, region us-chicago-1, the key's
    fingerprint, key_file). Returns ``(config_path, key_path)``. For development against
    the emulator only: the identity is made up and the key is unencrypted."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    key = new_key()
    key_path = root / f"key_{profile}.pem"
    write_key(key_path, key)
    config_path = root / CONFIG_NAME
    values = {
        "user": USER,
        "tenancy": TENANCY,
        "region": REGION,
        "fingerprint": fingerprint(key),
        "key_file": str(key_path),
    }
    write_profile(config_path, profile, values)
    return str(config_path), str(key_path)
