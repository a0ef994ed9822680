#!/bin/sh
# LocalStack "ready" hook (mounted into /etc/localstack/init/ready.d/ by docker-compose.yml):
# creates the two buckets once S3 answers. Re-runs are harmless, and a failure here keeps the
# container unhealthy (see its healthcheck), so nothing runs against storage without buckets.
set -eu

for bucket in "${S3_BUCKET:-whisper-api}" "${S3_INBOX_BUCKET:-whisper-inbox}"; do
    if awslocal s3api head-bucket --bucket "$bucket" >/dev/null 2>&1; then
        echo "bucket $bucket already exists"
    else
        awslocal s3 mb "s3://$bucket"
    fi
done
