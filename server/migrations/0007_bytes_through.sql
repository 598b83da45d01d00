-- Bytes clients read from the source to copy them; server-side copies (S3 CopyObject,
-- UploadPartCopy) add nothing.
ALTER TABLE tasks ADD COLUMN bytes_through BIGINT NOT NULL DEFAULT 0;
