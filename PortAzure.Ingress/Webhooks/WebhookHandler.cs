using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.Unicode;
using Microsoft.Extensions.Options;
using Microsoft.Net.Http.Headers;
using OpenTelemetry;
using OpenTelemetry.Context.Propagation;
using PortAzure.Diagnostics;
using PortAzure.Ingress.Edge;
using PortAzure.Ingress.Diagnostics;
using PortAzure.Ingress.Queue;
using PortAzure.Redis;
using PortAzure.Security;
using PortAzure.Signing;
using PortAzure.Targets;
using StackExchange.Redis;

namespace PortAzure.Ingress.Webhooks;

/// <summary>
/// Accepts a Port call on Azure's own webhook path: checks the target, the body and Port's signature,
/// then hands the run to the stream. Answers 202 only once Redis holds the entry.
/// </summary>
internal sealed partial class WebhookHandler(
    IOptionsMonitor<IngressOptions> ingressOptions,
    IOptionsMonitor<PortOptions> portOptions,
    IOptionsMonitor<AzureDevOpsOptions> azureOptions,
    RunQueue queue,
    ReplicaConfirmation replicas,
    WebhookConcurrencyLimit concurrency,
    WebhookGlobalLimit globalLimit,
    WebhookOpenCalls openCalls,
    TimeProvider timeProvider,
    IngressMetrics metrics,
    ILogger<WebhookHandler> logger)
{
    public const string IdempotencyKeyHeader = "Idempotency-Key";
    private static readonly TimeSpan RedisRetryAfter = TimeSpan.FromSeconds(5);
    private static readonly TimeSpan OverloadedRetryAfter = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan ReplayGuardClockMargin = TimeSpan.FromMinutes(1);

    // One line per 10 s for each of: a refusal's reason (refusals come before any check of who is calling: one line each
    // would let anyone make the log the flood), Redis away (every call fails the same way), and duplicates.
    private const string QueueErrorLine = "error:queue_unavailable";
    private const string QueueFullLine = "error:queue_full";
    private const string QueueDamagedLine = "error:queue_damaged";
    private const string DuplicateLine = "duplicate";
    private const string ReplicationLine = "error:replication_unconfirmed";
    private readonly LogThrottle _lines = new(timeProvider, TimeSpan.FromSeconds(10));

    public async Task<IResult> HandleAsync(HttpContext context, string org, string webhook)
    {
        var options = ingressOptions.CurrentValue;
        var request = context.Request;

        if (!TargetNames.IsValidOrg(org))
        {
            return Reject(StatusCodes.Status400BadRequest, RejectionReasons.InvalidOrg,
                "The organisation name may hold only letters, digits and inner hyphens (at most 50).");
        }
        if (!TargetNames.IsValidWebhook(webhook))
        {
            return Reject(StatusCodes.Status400BadRequest, RejectionReasons.InvalidWebhook,
                "The webhook name may hold only letters, digits, '-' and '_' (at most 100).");
        }
        if (!IsJson(request.ContentType))
        {
            return Reject(StatusCodes.Status415UnsupportedMediaType, RejectionReasons.UnsupportedMediaType,
                "Send the run as 'Content-Type: application/json' (UTF-8: a charset parameter, if any, must be utf-8).");
        }
        // The signature covers the bytes as sent and the body goes to Azure as it came: a compressed one would fail the
        // signature check (signed uncompressed) or the UTF-8 check (signed compressed), each naming the wrong cause.
        if (request.Headers.ContentEncoding is { Count: > 0 } encoding && !IsIdentity(encoding))
        {
            context.Response.Headers.AcceptEncoding = "identity";
            return Reject(StatusCodes.Status415UnsupportedMediaType, RejectionReasons.UnsupportedContentEncoding,
                "The body must be sent uncompressed (no Content-Encoding, or 'identity'), as Port sends it.");
        }
        if (request.ContentLength > options.MaxBodyBytes)
        {
            return TooLarge(options);
        }

        // Held from the body read to the end of the signature check: what one address can pin before anyone knows who it is.
        using var open = openCalls.TryEnter(context);
        if (!open.IsAcquired)
        {
            // Who, as for the bucket's refusals (1102): the 429 alone does not say which client holds its calls open.
            Log.TooManyOpenCalls(logger, WebhookRateLimiting.ClientKey(context));
            return Reject(StatusCodes.Status429TooManyRequests, RejectionReasons.RateLimited,
                "Too many webhook calls from this address in progress at once; retry after the number of seconds in Retry-After.",
                OverloadedRetryAfter, LogLevel.Debug);
        }
        byte[]? body;
        try
        {
            body = await RequestBody.ReadAsync(request.Body, request.ContentLength, options.MaxBodyBytes, context.RequestAborted);
        }
        catch (BadHttpRequestException ex)
        {
            // Kestrel refuses the body mid-read (broken chunk framing, its own size limit, too slow):
            // without this the exception handler would answer 500 for the client's mistake.
            return Unreadable(ex, options);
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException)
        {
            // The client went away mid-body (a reset, an abort). Left to the exception handler it was an Error line with a
            // stack trace and a 500, per call, before any signature check: a cheap log flood. Nobody reads an answer, and
            // one would make Kestrel drain a body whose read failed (an Error line of its own): the connection is aborted.
            Reject(StatusCodes.Status400BadRequest, RejectionReasons.BodyUnreadable, "The connection was lost before the whole body arrived.", level: LogLevel.Debug);
            context.Abort();
            return Results.Empty;
        }
        if (body is null)
        {
            return TooLarge(options);
        }

        if (CheckSignature(request, body, options) is { } signatureProblem)
        {
            return signatureProblem;
        }
        open.Dispose();

        using (var token = globalLimit.TryTake())
        {
            if (!token.IsAcquired)
            {
                // Debug, as for the per-client limit: under a flood one line per refused call would be the flood.
                return Reject(StatusCodes.Status429TooManyRequests, RejectionReasons.RateLimited,
                    "Too many webhook calls; retry after the number of seconds in Retry-After.", WebhookRateLimiting.RetryAfter(token), LogLevel.Debug);
            }
        }

        if (!azureOptions.CurrentValue.IsAllowed(org, webhook))
        {
            return Reject(StatusCodes.Status404NotFound, RejectionReasons.UnknownTarget,
                "This organisation and webhook are not in the relay's AzureDevOps:Targets list.");
        }

        if (body.Length == 0)
        {
            return Reject(StatusCodes.Status400BadRequest, RejectionReasons.BodyEmpty, "The body is empty; send the run as a JSON object.");
        }

        // The JSON reader checks UTF-8 only in the strings it is asked to decode; the rest of the
        // body would reach Azure unchecked.
        if (!Utf8.IsValid(body))
        {
            return Reject(StatusCodes.Status400BadRequest, RejectionReasons.BodyInvalidJson, "The body is not valid UTF-8, which JSON requires.");
        }

        string? runId;
        try
        {
            using var document = JsonDocument.Parse(body, new JsonDocumentOptions
            {
                MaxDepth = options.MaxJsonDepth,
                // Two values for one key would let us and Azure read different run ids.
                AllowDuplicateProperties = false,
            });
            if (document.RootElement.ValueKind != JsonValueKind.Object)
            {
                return Reject(StatusCodes.Status400BadRequest, RejectionReasons.BodyNotObject,
                    $"The body must be a JSON object, not {document.RootElement.ValueKind.ToString().ToLowerInvariant()}.");
            }
            runId = RunIdExtractor.Find(document.RootElement);
        }
        catch (JsonException ex)
        {
            // The position only: the parser's own message quotes the body (a repeated property's name, the start of a bad
            // literal), which may hold an action's secret inputs, and the answer is kept by whatever keeps responses (Port,
            // a proxy's log), where the body itself is not. The parser gives a repeated property no position.
            var at = ex.LineNumber is { } line && ex.BytePositionInLine is { } column ? $" at line {line + 1}, byte {column + 1} of that line" : "";
            return Reject(StatusCodes.Status400BadRequest, RejectionReasons.BodyInvalidJson,
                $"The body is not valid JSON{at}: a syntax error, a property repeated in one object, or nesting deeper than {options.MaxJsonDepth} " +
                "levels (Ingress:MaxJsonDepth).");
        }
        catch (InvalidOperationException)
        {
            // The parser accepts an escaped half of a surrogate pair; decoding a run id (or a key on its path) holding one throws.
            return Reject(StatusCodes.Status400BadRequest, RejectionReasons.BodyInvalidJson,
                "The body escapes half of a UTF-16 surrogate pair (such as \\ud800 alone), which is not valid Unicode.");
        }

        if (runId is not null && !RunIdExtractor.IsAcceptable(runId, options.MaxRunIdLength))
        {
            return Reject(StatusCodes.Status400BadRequest, RejectionReasons.RunIdInvalid,
                $"The run id must be 1 to {options.MaxRunIdLength} printable ASCII characters without spaces, and not '.' or '..'.");
        }
        // The run id is inside the signed body; the header is not signed. A header must never turn one
        // signed run into several deliveries, so it counts only when the body carries no run id, and only then
        // is it checked: a header a proxy added must not block a signed run that does not need it.
        string? explicitKey = null;
        if (runId is null && request.Headers.TryGetValue(IdempotencyKeyHeader, out var keyHeader))
        {
            explicitKey = keyHeader.Count == 1 ? keyHeader[0] : null;
            // An empty header (a template that always sends it) is no key: the body's hash stands in, as without one.
            if (explicitKey == "")
            {
                explicitKey = null;
            }
            else if (explicitKey is null || !RunIdExtractor.IsAcceptable(explicitKey, options.MaxRunIdLength))
            {
                return Reject(StatusCodes.Status400BadRequest, RejectionReasons.RunIdInvalid,
                    $"The Idempotency-Key header must be one value of 1 to {options.MaxRunIdLength} printable ASCII characters without spaces, and not '.' or '..'.");
            }
        }
        string? bodyHash = null;
        var idempotencyKey = runId ?? explicitKey ?? "sha256:" + (bodyHash = Sha256Hex(body));
        var replayGuard = GuardAgainstReplay(request, body, bodyHash, options);

        return await EnqueueAsync(context, org, webhook, body, runId, idempotencyKey, replayGuard, options);
    }

    /// <summary>
    /// The idempotency key is per target, and neither Port's signature nor the unsigned Idempotency-Key header
    /// pins a call to one: a captured call sent again to another webhook, or (without a run id) under another
    /// header value, would be a second run. So a signed call is also named by what its signature covers, for every
    /// target. With a timestamp, as long as that timestamp is accepted (a sender meaning a second run signs it
    /// anew). A legacy SHA-1 signature covers the body alone and has no timestamp: there the body is the call, for
    /// every target, for the idempotency window, whatever the header says. So too for every call while legacy signatures
    /// are accepted: the Dispatcher's POST to Azure carries the body's HMAC-SHA1 under Port's secret (for a target
    /// without a secret of its own), which is a legacy signature of that body; anyone who sees that POST could send it
    /// back to another webhook as a new run.
    /// </summary>
    /// <param name="bodyHash">The body's SHA-256 in hex when the caller has it already, else null.</param>
    private static ReplayGuard GuardAgainstReplay(HttpRequest request, byte[] body, string? bodyHash, IngressOptions options)
    {
        var timestamp = request.Headers[PortSignature.TimestampHeader].ToString();
        // The timestamp is accepted from `tolerance` ahead of the clock to `tolerance` behind it, on the clock of the
        // Ingress that checks it: the margin covers Ingress replicas whose clocks differ by up to a minute.
        var timestampWindow = TimeSpan.FromSeconds(2 * options.TimestampToleranceSeconds) + ReplayGuardClockMargin;
        if (timestamp.Length == 0 || options.AllowLegacySha1Signature)
        {
            var window = TimeSpan.FromHours(options.IdempotencyWindowHours);
            if (timestamp.Length > 0 && timestampWindow > window)
            {
                // A call with a timestamp keeps its guard at least as long as that timestamp is accepted.
                window = timestampWindow;
            }
            return new ReplayGuard(RedisKeys.SignedCall("legacy:" + (bodyHash ?? Sha256Hex(body))), window);
        }
        Span<byte> hash = stackalloc byte[SHA256.HashSizeInBytes];
        PortSignature.HashSignedContent(timestamp, body, hash);
        return new ReplayGuard(RedisKeys.SignedCall("v1:" + Convert.ToHexStringLower(hash)), timestampWindow);
    }

    private async Task<IResult> EnqueueAsync(HttpContext context, string org, string webhook, byte[] body, string? runId, string idempotencyKey,
        ReplayGuard replayGuard, IngressOptions options)
    {
        // Refused before the producer span starts: nothing is sent, and a send span would say otherwise.
        using var permit = concurrency.TryEnter();
        if (!permit.IsAcquired)
        {
            // Debug, as for the rate limit: under overload one line per refused call would add to it; the metric counts them.
            return Reject(StatusCodes.Status503ServiceUnavailable, RejectionReasons.Overloaded,
                "Too many runs are waiting to be queued (Ingress:MaxConcurrentCalls); nothing was accepted. Retry after the number of seconds in Retry-After.",
                OverloadedRetryAfter, LogLevel.Debug);
        }
        var deliveryId = NewDeliveryId();
        using var activity = PortAzureDiagnostics.ActivitySource.StartActivity($"send {RedisKeys.Stream}", ActivityKind.Producer);
        activity?.SetTag(PortAzureDiagnostics.Tags.MessagingSystem, PortAzureDiagnostics.RedisStreams);
        activity?.SetTag(PortAzureDiagnostics.Tags.MessagingDestination, RedisKeys.Stream);
        activity?.SetTag(PortAzureDiagnostics.Tags.MessagingOperationType, "send");
        activity?.SetTag(PortAzureDiagnostics.Tags.MessagingOperationName, "send");
        activity?.SetTag(PortAzureDiagnostics.Tags.MessagingMessageId, deliveryId);
        activity?.SetTag(PortAzureDiagnostics.Tags.DeliveryId, deliveryId);
        activity?.SetTag(PortAzureDiagnostics.Tags.RunId, runId);
        activity?.SetTag(PortAzureDiagnostics.Tags.Org, org);
        activity?.SetTag(PortAzureDiagnostics.Tags.Webhook, webhook);

        var (traceParent, traceState) = CaptureTraceContext(activity ?? Activity.Current);
        var entry = new DeliveryEntry(deliveryId, org, webhook, body, idempotencyKey, runId, timeProvider.GetUtcNow(), traceParent, traceState);

        var waitForReplicas = options.WaitForReplicas > 0;
        var stamp = waitForReplicas ? replicas.Stamp() : default;
        EnqueueResult result;
        try
        {
            result = await queue.EnqueueAsync(entry, TimeSpan.FromHours(options.IdempotencyWindowHours), replayGuard, rewriteDuplicate: waitForReplicas);
        }
        // RedisCommandException is not a RedisException: the client refused to send the script (EVAL disabled in its
        // command map, a write routed to a replica during a failover). Nothing was sent, so nothing was accepted.
        catch (Exception ex) when (RedisFailures.IsFailure(ex) || ex is RedisCommandException or ObjectDisposedException)
        {
            activity?.SetStatus(ActivityStatusCode.Error, "queue unavailable");
            activity?.SetTag(PortAzureDiagnostics.Tags.Reason, RejectionReasons.RedisUnavailable);
            // A full Redis answers, so "unavailable" would send the operator looking for an outage; its own line (and its
            // own count) says what to free. Port's answer is the same: nothing was written (RedisFailures.IsOutOfMemory).
            // So does a key of another type (damaged, or written by something else): Redis answers, and refuses every run
            // that meets it until the key is mended.
            var full = RedisFailures.IsOutOfMemory(ex);
            var damaged = RedisFailures.IsWrongType(ex);
            if (_lines.Take(full ? QueueFullLine : damaged ? QueueDamagedLine : QueueErrorLine) is var failed and > 0)
            {
                if (full)
                {
                    Log.QueueFull(logger, ex, org, webhook, failed);
                }
                else if (damaged)
                {
                    Log.QueueKeyDamaged(logger, ex, org, webhook, failed);
                }
                else
                {
                    Log.QueueUnavailable(logger, ex, org, webhook, failed);
                }
            }
            // A timeout, or a connection lost after the script was sent, does not stop the script on the server: the
            // run may be queued after all. A retry is safe either way (a queued run answers 200 duplicate), but
            // "nothing was accepted" would be a claim we cannot make. The refusal line is Debug: the Error above
            // already counts these calls, and one outage wrote both lines every 10 s.
            return Reject(StatusCodes.Status503ServiceUnavailable, RejectionReasons.RedisUnavailable,
                RedisFailures.OutcomeUnknown(ex)
                    ? "Redis did not answer; the run may or may not be queued. Retry later: if it was queued, the retry answers 200 duplicate."
                    : "The run could not be queued; nothing was accepted. Retry later.",
                RedisRetryAfter, LogLevel.Debug);
        }

        // A duplicate waits too: its 200 says the run is held as surely as the 202 did.
        if (waitForReplicas && await ConfirmReplicasAsync(org, webhook, result, stamp, options, activity) is { } unconfirmed)
        {
            return unconfirmed;
        }

        var location = $"/api/deliveries/{result.DeliveryId}";
        context.Response.Headers.Location = location;
        if (!result.Accepted)
        {
            activity?.SetTag(PortAzureDiagnostics.Tags.Outcome, "duplicate");
            // Nothing new was sent: the message is the one already queued (the id made for this call names nothing).
            activity?.SetTag(PortAzureDiagnostics.Tags.MessagingMessageId, result.DeliveryId);
            activity?.SetTag(PortAzureDiagnostics.Tags.DeliveryId, result.DeliveryId);
            metrics.Duplicate();
            Log.DuplicateAgain(logger, result.DeliveryId, runId, org, webhook);
            // Throttled as the refusals are: whoever holds a captured signed call can repeat it within the timestamp
            // tolerance, and one Information line per call would let them flood the log.
            if (_lines.Take(DuplicateLine) is var duplicates and > 0)
            {
                Log.Duplicate(logger, result.DeliveryId, runId, org, webhook, duplicates);
            }
            return TypedResults.Ok(new WebhookAccepted(result.DeliveryId, runId, "duplicate", Duplicate: true));
        }
        activity?.SetTag(PortAzureDiagnostics.Tags.Outcome, "accepted");
        metrics.Accepted();
        Log.Accepted(logger, deliveryId, runId, org, webhook);
        return TypedResults.Json(new WebhookAccepted(deliveryId, runId, "queued", Duplicate: null), statusCode: StatusCodes.Status202Accepted);
    }

    private async Task<IResult?> ConfirmReplicasAsync(string org, string webhook, EnqueueResult result, WriteStamp stamp, IngressOptions options, Activity? activity)
    {
        var acknowledgement = default(ReplicaAcknowledgement);
        Exception? failure = null;
        if (result.Written)
        {
            try
            {
                acknowledgement = await replicas.WaitAsync(options.WaitForReplicas, TimeSpan.FromMilliseconds(options.ReplicaWaitMilliseconds), stamp);
            }
            catch (Exception ex) when (RedisFailures.IsFailure(ex) || ex is RedisCommandException or ObjectDisposedException)
            {
                failure = ex;
            }
            if (failure is null && acknowledgement.Confirms(options.WaitForReplicas))
            {
                return null;
            }
        }
        activity?.SetStatus(ActivityStatusCode.Error, "replication unconfirmed");
        var why = !result.Written ? "Redis refused the write a WAIT needs (out of memory, or read-only)"
            : failure is not null ? "Redis did not answer the WAIT"
            : acknowledgement.ConnectionChanged ? "the connection to Redis changed between the write and the WAIT"
            : $"{acknowledgement.Replicas} of the {options.WaitForReplicas} replicas it asks for confirmed it within {options.ReplicaWaitMilliseconds} ms";
        if (_lines.Take(ReplicationLine) is var calls and > 0)
        {
            Log.ReplicationUnconfirmed(logger, failure, org, webhook, why, calls);
        }
        // The run is queued (the script answered): it is delivered unless the primary is lost before a replica has it.
        // Port is told so, rather than "accepted", and a retry is answered from the idempotency key, after its own wait. The
        // call's span says it was refused; the producer span, under which the run is delivered, what Redis answered.
        activity?.SetTag(PortAzureDiagnostics.Tags.Outcome, result.Accepted ? "accepted" : "duplicate");
        activity?.SetTag(PortAzureDiagnostics.Tags.Reason, RejectionReasons.ReplicationUnconfirmed);
        if (!result.Accepted)
        {
            activity?.SetTag(PortAzureDiagnostics.Tags.MessagingMessageId, result.DeliveryId);
            activity?.SetTag(PortAzureDiagnostics.Tags.DeliveryId, result.DeliveryId);
        }
        return Reject(StatusCodes.Status503ServiceUnavailable, RejectionReasons.ReplicationUnconfirmed,
            (result.Accepted ? $"The run is queued as delivery {result.DeliveryId} on the Redis primary" : $"The run was already accepted as delivery {result.DeliveryId}") +
            $", but Ingress:WaitForReplicas is not met: {why}. It is delivered unless the primary is lost before a replica has it. " +
            "Retry later: the retry answers 200 duplicate once the replicas hold it" +
            (result.Written ? "." : " and Redis takes writes again."),
            RedisRetryAfter, LogLevel.Debug);
    }

    private IResult? CheckSignature(HttpRequest request, byte[] body, IngressOptions options)
    {
        var signature = request.Headers[PortSignature.SignatureHeader].ToString();
        var timestampHeader = request.Headers[PortSignature.TimestampHeader].ToString();
        var secrets = portOptions.CurrentValue.VerificationSecrets();
        if (string.IsNullOrWhiteSpace(signature))
        {
            return Reject(StatusCodes.Status401Unauthorized, RejectionReasons.SignatureMissing,
                $"The {PortSignature.SignatureHeader} header is missing.");
        }

        if (PortSignature.HasV1Signature(signature) || !string.IsNullOrEmpty(timestampHeader))
        {
            if (string.IsNullOrEmpty(timestampHeader))
            {
                return Reject(StatusCodes.Status401Unauthorized, RejectionReasons.TimestampMissing,
                    $"A v1 signature needs the {PortSignature.TimestampHeader} header.");
            }
            if (!PortSignature.TryParseTimestamp(timestampHeader, out var timestamp))
            {
                return Reject(StatusCodes.Status401Unauthorized, RejectionReasons.TimestampInvalid,
                    $"{PortSignature.TimestampHeader} must be Unix seconds in decimal digits.");
            }
            var skew = timeProvider.GetUtcNow() - timestamp;
            var tolerance = TimeSpan.FromSeconds(options.TimestampToleranceSeconds);
            if (skew > tolerance)
            {
                return Reject(StatusCodes.Status401Unauthorized, RejectionReasons.TimestampTooOld,
                    $"The timestamp is older than the {options.TimestampToleranceSeconds} s tolerance (a replay, or a clock out of sync).");
            }
            if (-skew > tolerance)
            {
                return Reject(StatusCodes.Status401Unauthorized, RejectionReasons.TimestampInFuture,
                    $"The timestamp is more than {options.TimestampToleranceSeconds} s ahead of the relay's clock.");
            }
            if (!PortSignature.HasV1Signature(signature))
            {
                return Reject(StatusCodes.Status401Unauthorized, RejectionReasons.SignatureVersionUnsupported,
                    $"{PortSignature.SignatureHeader} must carry a 'v1,<base64>' signature.");
            }
            return PortSignature.VerifyV1(signature, timestampHeader, body, secrets)
                ? null
                : Reject(StatusCodes.Status401Unauthorized, RejectionReasons.SignatureInvalid,
                    "The signature does not match the body under the configured Port client secret.");
        }

        if (!options.AllowLegacySha1Signature)
        {
            return Reject(StatusCodes.Status401Unauthorized, RejectionReasons.SignatureVersionUnsupported,
                $"Only 'v1,<base64>' signatures with {PortSignature.TimestampHeader} are accepted (Ingress:AllowLegacySha1Signature is off).");
        }
        return PortSignature.VerifyLegacySha1(signature, body, secrets)
            ? null
            : Reject(StatusCodes.Status401Unauthorized, RejectionReasons.SignatureInvalid,
                "The legacy SHA-1 signature does not match the body under the configured Port client secret.");
    }

    private IResult Reject(int status, string reason, string detail, TimeSpan? retryAfter = null, LogLevel level = LogLevel.Information)
    {
        metrics.Rejected(reason);
        // The call's answer goes on the call's span. Inside the enqueue the current span is the producer's, which says what
        // became of the send (a run refused 503 replication_unconfirmed is queued, and delivered under it).
        var span = Activity.Current is { Kind: ActivityKind.Producer } producer ? producer.Parent ?? producer : Activity.Current;
        span?.SetTag(PortAzureDiagnostics.Tags.Outcome, "rejected");
        span?.SetTag(PortAzureDiagnostics.Tags.Reason, reason);
        Log.RejectedAgain(logger, status, reason);
        if (level > LogLevel.Debug && _lines.Take(reason) is var calls and > 0)
        {
            Log.Rejected(logger, level, status, reason, calls);
        }
        return Problems.Create(status, reason, detail, retryAfter);
    }

    private IResult TooLarge(IngressOptions options) =>
        Reject(StatusCodes.Status413PayloadTooLarge, RejectionReasons.BodyTooLarge, $"The body is larger than {options.MaxBodyBytes} bytes (Ingress:MaxBodyBytes).");

    private IResult Unreadable(BadHttpRequestException exception, IngressOptions options) => exception.StatusCode switch
    {
        StatusCodes.Status413PayloadTooLarge => TooLarge(options),
        StatusCodes.Status408RequestTimeout => Reject(StatusCodes.Status408RequestTimeout, RejectionReasons.BodyTimeout,
            "The body arrived more slowly than the server's minimum data rate."),
        _ => Reject(StatusCodes.Status400BadRequest, RejectionReasons.BodyUnreadable,
            "The body could not be read: its framing (Content-Length or chunked encoding) is broken."),
    };

    private static bool IsJson(string? contentType)
    {
        if (!MediaTypeHeaderValue.TryParse(contentType, out var mediaType) || mediaType.MediaType.Value is not { } type)
        {
            return false;
        }
        var json = type.Equals("application/json", StringComparison.OrdinalIgnoreCase) ||
                   (type.StartsWith("application/", StringComparison.OrdinalIgnoreCase) && type.EndsWith("+json", StringComparison.OrdinalIgnoreCase));
        // JSON is UTF-8 (RFC 8259): another charset would pass here and fail as "not valid UTF-8" or "not valid JSON".
        var charset = HeaderUtilities.RemoveQuotes(mediaType.Charset);
        return json && (charset.Length == 0 || charset.Equals("utf-8", StringComparison.OrdinalIgnoreCase)
            || charset.Equals("utf8", StringComparison.OrdinalIgnoreCase));
    }

    private static bool IsIdentity(Microsoft.Extensions.Primitives.StringValues encoding)
    {
        foreach (var value in encoding)
        {
            foreach (var coding in (value ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                if (!coding.Equals("identity", StringComparison.OrdinalIgnoreCase))
                {
                    return false;
                }
            }
        }
        return true;
    }

    private static (string? TraceParent, string? TraceState) CaptureTraceContext(Activity? activity)
    {
        if (activity is null)
        {
            return (null, null);
        }
        string? traceParent = null, traceState = null;
        Propagators.DefaultTextMapPropagator.Inject(new PropagationContext(activity.Context, Baggage.Current), (object?)null, (_, key, value) =>
        {
            if (key == "traceparent")
            {
                traceParent = value;
            }
            else if (key == "tracestate")
            {
                traceState = value;
            }
        });
        return (traceParent ?? activity.Id, traceState ?? activity.TraceStateString);
    }

    private static string Sha256Hex(byte[] body) => Convert.ToHexStringLower(SHA256.HashData(body));

    /// <summary>Time-ordered, so ids sort as the runs arrived; 32 hex digits.</summary>
    private static string NewDeliveryId() => "d_" + Guid.CreateVersion7().ToString("N");

    private static partial class Log
    {
        // Debug: a line per accepted run took about an eighth of the Ingress's CPU per run, nearly all of it
        // in the console provider (docs/benchmarks.md). The span, the metric and the record show every run; the
        // AppHost turns these lines on for the local dashboard.
        [LoggerMessage(EventIds.Accepted, LogLevel.Debug, "Accepted run {RunId} for {Org}/{Webhook} as delivery {DeliveryId}")]
        public static partial void Accepted(ILogger logger, string deliveryId, string? runId, string org, string webhook);

        [LoggerMessage(EventIds.Duplicate, LogLevel.Information,
            "Duplicate call: run {RunId} for {Org}/{Webhook} was already accepted as delivery {DeliveryId}; {Calls} duplicate calls, for any run, since the last such line (at most one every 10 s; each call at Debug, event 1006)")]
        public static partial void Duplicate(ILogger logger, string deliveryId, string? runId, string org, string webhook, long calls);

        [LoggerMessage(EventIds.DuplicateAgain, LogLevel.Debug, "Run {RunId} for {Org}/{Webhook} was already accepted as delivery {DeliveryId}")]
        public static partial void DuplicateAgain(ILogger logger, string deliveryId, string? runId, string org, string webhook);

        [LoggerMessage(EventId = EventIds.Rejected,
            Message = "Rejected a webhook call with {Status}: {Reason} ({Calls} since the last such line; at most one per reason every 10 s)")]
        public static partial void Rejected(ILogger logger, LogLevel level, int status, string reason, long calls);

        [LoggerMessage(EventIds.TooManyOpenCalls, LogLevel.Debug,
            "Refused a webhook call from {Client}: as many of its calls as Ingress:RateLimit:ConcurrentCallsPerClient allows are still being read or checked")]
        public static partial void TooManyOpenCalls(ILogger logger, string client);

        [LoggerMessage(EventIds.RejectedAgain, LogLevel.Debug, "Rejected a webhook call with {Status}: {Reason}")]
        public static partial void RejectedAgain(ILogger logger, int status, string reason);

        [LoggerMessage(EventIds.QueueUnavailable, LogLevel.Error,
            "Could not queue a run for {Org}/{Webhook}: Redis is unavailable ({Calls} calls failed this way since the last such line; at most one every 10 s)")]
        public static partial void QueueUnavailable(ILogger logger, Exception exception, string org, string webhook, long calls);

        [LoggerMessage(EventIds.ReplicationUnconfirmed, LogLevel.Error,
            "A run for {Org}/{Webhook} is queued on the Redis primary, but Ingress:WaitForReplicas is not met: {Why}; the call was answered 503 ({Calls} calls answered so since the last such line; at most one every 10 s)")]
        public static partial void ReplicationUnconfirmed(ILogger logger, Exception? exception, string org, string webhook, string why, long calls);

        [LoggerMessage(EventIds.QueueKeyDamaged, LogLevel.Error,
            "Could not queue a run for {Org}/{Webhook}: a Redis key it writes holds another type (damaged, or written by something else), and nothing was written ({Calls} calls failed this way since the last such line; at most one every 10 s)")]
        public static partial void QueueKeyDamaged(ILogger logger, Exception exception, string org, string webhook, long calls);

        [LoggerMessage(EventIds.QueueFull, LogLevel.Error,
            "Could not queue a run for {Org}/{Webhook}: Redis is out of memory (maxmemory reached; noeviction refuses writes), and nothing was written ({Calls} calls failed this way since the last such line; at most one every 10 s)")]
        public static partial void QueueFull(ILogger logger, Exception exception, string org, string webhook, long calls);
    }
}

internal sealed record WebhookAccepted(
    string DeliveryId,
    string? RunId,
    string Status,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] bool? Duplicate);
