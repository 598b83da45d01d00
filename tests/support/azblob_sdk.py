"""Reads and writes Azure Blob storage with Microsoft's Python SDK (azure-storage-blob), for the
tests: a client that is not ours. Usage: azblob_sdk.py COMMAND CONTAINER [ARGS], with the
connection string in AZURE_STORAGE_CONNECTION_STRING. Answers are JSON on stdout.

  create CONTAINER            creates the container
  objects CONTAINER           {blob name: size} of every committed blob
  staged CONTAINER            {blob name: uncommitted blocks} of blobs that have some
  get CONTAINER NAME FILE     downloads a blob into FILE; prints its properties
  put CONTAINER NAME FILE     uploads FILE as a blob (in one piece)
  sas CONTAINER PERMISSIONS   {"sas": a container SAS token (e.g. PERMISSIONS "racwdl"), one hour}
"""
import json
import os
import sys

import datetime

from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas


def main():
    command, container = sys.argv[1], sys.argv[2]
    service = BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
    c = service.get_container_client(container)
    if command == "create":
        c.create_container()
        out = {"created": container}
    elif command == "objects":
        out = {b.name: b.size for b in c.list_blobs()}
    elif command == "staged":
        out = {}
        for b in c.list_blobs(include=["uncommittedblobs"]):
            _, uncommitted = c.get_blob_client(b.name).get_block_list("uncommitted")
            if uncommitted:
                out[b.name] = len(uncommitted)
    elif command == "get":
        blob = c.get_blob_client(sys.argv[3])
        with open(sys.argv[4], "wb") as f:
            blob.download_blob().readinto(f)
        p = blob.get_blob_properties()
        md5 = p.content_settings.content_md5
        out = {
            "size": p.size,
            "content_type": p.content_settings.content_type,
            "content_md5": md5.hex() if md5 else None,
            "blob_type": str(p.blob_type),
        }
    elif command == "put":
        with open(sys.argv[4], "rb") as f:
            c.get_blob_client(sys.argv[3]).upload_blob(f, overwrite=True)
        out = {"put": sys.argv[3]}
    elif command == "sas":
        token = generate_container_sas(
            account_name=service.account_name,
            container_name=container,
            account_key=service.credential.account_key,
            permission=ContainerSasPermissions.from_string(sys.argv[3]),
            expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1),
        )
        out = {"sas": token}
    else:
        raise SystemExit(f"unknown command {command}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
