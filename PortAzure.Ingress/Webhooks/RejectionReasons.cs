namespace PortAzure.Ingress.Webhooks;

/// <summary>The machine-readable <c>reason</c> of every rejection the webhook endpoint answers.</summary>
internal static class RejectionReasons
{
    public const string InvalidOrg = "invalid_org";
    public const string InvalidWebhook = "invalid_webhook";
    public const string UnknownTarget = "unknown_target";
    public const string UnsupportedMediaType = "unsupported_media_type";
    public const string UnsupportedContentEncoding = "unsupported_content_encoding";
    public const string BodyTooLarge = "body_too_large";
    public const string BodyEmpty = "body_empty";
    public const string BodyUnreadable = "body_unreadable";
    public const string BodyTimeout = "body_timeout";
    public const string BodyInvalidJson = "body_invalid_json";
    public const string BodyNotObject = "body_not_json_object";
    public const string SignatureMissing = "signature_missing";
    public const string SignatureInvalid = "signature_invalid";
    public const string SignatureVersionUnsupported = "signature_version_unsupported";
    public const string TimestampMissing = "timestamp_missing";
    public const string TimestampInvalid = "timestamp_invalid";
    public const string TimestampTooOld = "timestamp_too_old";
    public const string TimestampInFuture = "timestamp_in_future";
    public const string RunIdInvalid = "run_id_invalid";
    public const string RedisUnavailable = "queue_unavailable";
    public const string ReplicationUnconfirmed = "replication_unconfirmed";
    public const string RateLimited = "rate_limited";
    public const string Overloaded = "overloaded";
}
