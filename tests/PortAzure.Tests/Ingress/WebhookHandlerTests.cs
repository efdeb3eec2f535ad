using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;
using PortAzure.Redis;
using PortAzure.Signing;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;

namespace PortAzure.Tests.Ingress;

public class WebhookHandlerTests
{
    [Fact]
    public async Task Post_SignedRun_Answers202AfterTheEntryIsInTheStream()
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var runId = TestRuns.NewRunId();
        var body = TestRuns.Body(runId);

        using var response = await relay.SendRunAsync(body);

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var accepted = await response.Content.ReadFromJsonAsync<JsonElement>();
        var deliveryId = accepted.GetProperty("deliveryId").GetString()!;
        Assert.Equal(runId, accepted.GetProperty("runId").GetString());
        Assert.Equal("queued", accepted.GetProperty("status").GetString());
        Assert.Equal($"/api/deliveries/{deliveryId}", response.Headers.Location?.ToString());

        var entries = await relay.Db.StreamRangeAsync(RedisKeys.Stream);
        var entry = Assert.Single(entries);
        var decoded = DeliveryEntry.FromStreamEntry(entry)!;
        Assert.Equal(deliveryId, decoded.DeliveryId);
        Assert.Equal(TestRuns.Org, decoded.Org);
        Assert.Equal(TestRuns.Webhook, decoded.Webhook);
        Assert.Equal(body, decoded.Body.ToArray());
        Assert.Equal(runId, decoded.RunId);
        Assert.Equal(runId, decoded.IdempotencyKey);
        Assert.Matches("^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$", decoded.TraceParent);
        Assert.InRange(decoded.ReceivedAt, DateTimeOffset.UtcNow.AddMinutes(-1), DateTimeOffset.UtcNow.AddSeconds(1));
        Assert.Equal(DeliveryStates.Queued, (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State));
    }

    [Fact]
    public async Task Post_SameRunTwice_SecondAnswers200DuplicateWithFirstIdAndEnqueuesNothing()
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var body = TestRuns.Body(TestRuns.NewRunId());

        using var first = await relay.SendRunAsync(body);
        using var second = await relay.SendRunAsync(body);

        Assert.Equal(HttpStatusCode.Accepted, first.StatusCode);
        Assert.Equal(HttpStatusCode.OK, second.StatusCode);
        var firstJson = await first.Content.ReadFromJsonAsync<JsonElement>();
        var secondJson = await second.Content.ReadFromJsonAsync<JsonElement>();
        Assert.Equal(firstJson.GetProperty("deliveryId").GetString(), secondJson.GetProperty("deliveryId").GetString());
        Assert.True(secondJson.GetProperty("duplicate").GetBoolean());
        Assert.Equal(1, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
    }

    [Fact]
    public async Task Post_IdempotencyWindowSet_KeyLivesThatLongAndTheRunIsNewOnceItIsGone()
    {
        await using var relay = await Relay.StartAsync(c => c["Ingress:IdempotencyWindowHours"] = "2", dispatchers: 0);
        var runId = TestRuns.NewRunId();
        var body = TestRuns.Body(runId);
        using var first = await relay.SendRunAsync(body);
        Assert.Equal(HttpStatusCode.Accepted, first.StatusCode);
        var firstId = (await first.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("deliveryId").GetString();

        var key = RedisKeys.Idempotency(TestRuns.Org, TestRuns.Webhook, runId);
        Assert.InRange((await relay.Db.KeyTimeToLiveAsync(key))!.Value.TotalSeconds, 2 * 3600 - 60, 2 * 3600);

        // The window over (the key expired): the same run id, signed anew as Port would, is a new run.
        await relay.Db.KeyDeleteAsync(key);
        using var later = TestRuns.Signed(body, at: DateTimeOffset.UtcNow.AddSeconds(-2));
        using var again = await relay.Ingress.Client.SendAsync(later);
        Assert.Equal(HttpStatusCode.Accepted, again.StatusCode);
        Assert.NotEqual(firstId, (await again.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("deliveryId").GetString());
        Assert.Equal(2, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
    }

    [Fact]
    public async Task Post_SameRunRepeated_OneInformationLineCountsTheDuplicates()
    {
        // A captured signed call can be repeated within the timestamp tolerance: one Information line per call was a
        // way to flood the log. Each call keeps its Debug line. The clock stands still: one 10-s window.
        await using var lease = await SharedRedis.LeaseAsync();
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await using var ingress = await TestHost.StartIngressAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = lease.ConnectionString,
            ["Port:ClientSecret"] = TestRuns.Secret,
        }, s => s.AddSingleton<TimeProvider>(clock));
        var body = TestRuns.Body(TestRuns.NewRunId());
        using (var first = await TestRuns.SendAsync(ingress.Client, body))
        {
            Assert.Equal(HttpStatusCode.Accepted, first.StatusCode);
        }

        for (var i = 0; i < 3; i++)
        {
            using var again = await TestRuns.SendAsync(ingress.Client, body);
            Assert.Equal(HttpStatusCode.OK, again.StatusCode);
        }
        clock.Advance(TimeSpan.FromSeconds(10));
        using (var later = await TestRuns.SendAsync(ingress.Client, body))
        {
            Assert.Equal(HttpStatusCode.OK, later.StatusCode);
        }

        // The first duplicate's line, then the next window's, which counts the two held back and itself.
        var information = ingress.Logs.Lines.Where(l => l.StartsWith("Information", StringComparison.Ordinal) && l.Contains("[1002]", StringComparison.Ordinal)).ToList();
        Assert.Equal(2, information.Count);
        Assert.Contains("Calls=1,", information[0], StringComparison.Ordinal);
        Assert.Contains("Calls=3,", information[1], StringComparison.Ordinal);
        Assert.Equal(4, ingress.Logs.Lines.Count(l => l.StartsWith("Debug", StringComparison.Ordinal) && l.Contains("[1006]", StringComparison.Ordinal)));
    }

    [Fact]
    public async Task Post_SameRunToTheTargetSpelledInCapitals_IsADuplicate()
    {
        // Port's signature does not cover the path, and Azure and the target list take names in any case.
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var body = TestRuns.Body(TestRuns.NewRunId());

        using var first = await relay.SendRunAsync(body);
        // Signed anew, as Port would send it: the same signed call again would be caught by the replay guard whatever the
        // target's spelling, and the test would not reach the per-target key.
        using var again = TestRuns.Signed(body, org: TestRuns.Org.ToUpperInvariant(), webhook: TestRuns.Webhook.ToUpperInvariant(), at: DateTimeOffset.UtcNow.AddSeconds(-2));
        using var second = await relay.Ingress.Client.SendAsync(again);

        Assert.Equal(HttpStatusCode.Accepted, first.StatusCode);
        Assert.Equal(HttpStatusCode.OK, second.StatusCode);
        Assert.Equal(1, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
    }

    [Fact]
    public async Task Post_RedisSilentPastTheTimeout_503SaysTheRunMayBeQueuedAndTheRetryIsADuplicate()
    {
        // The client gives up after its 3 s timeout; the script still runs once Redis goes on.
        await using var redis = await RedisServer.StartAsync();
        await using var relay = await Relay.StartAsync(redisConnection: redis.ConnectionString, dispatchers: 0);
        var body = TestRuns.Body(TestRuns.NewRunId());

        redis.Pause();
        HttpResponseMessage timedOut;
        try
        {
            timedOut = await relay.SendRunAsync(body);
        }
        finally
        {
            redis.Resume();
        }
        using (timedOut)
        {
            Assert.Equal(HttpStatusCode.ServiceUnavailable, timedOut.StatusCode);
            Assert.Contains("may or may not be queued", (await timedOut.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("detail").GetString(), StringComparison.Ordinal);
        }
        using var retry = await relay.SendRunAsync(body);

        Assert.Equal(HttpStatusCode.OK, retry.StatusCode);
        Assert.Equal(1, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
    }

    [Fact]
    public async Task Post_RedisDown_503SaysNothingWasAcceptedAndTheRetryIsAccepted()
    {
        // No connection: the script waits in the client's backlog and times out there, never written to Redis. Told "may or
        // may not be queued", Port or an operator would go looking for a run that cannot exist.
        await using var redis = await RedisServer.StartAsync();
        await using var relay = await Relay.StartAsync(redisConnection: redis.ConnectionString, dispatchers: 0);
        var body = TestRuns.Body(TestRuns.NewRunId());
        redis.Kill();

        string? detail = null;
        await Eventually.HoldsAsync(async () =>
        {
            // The first call may still go to the socket before the client sees it closed: that one's outcome is unknown.
            using var refused = await relay.SendRunAsync(body);
            Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
            detail = (await refused.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("detail").GetString();
            return detail!.Contains("nothing was accepted", StringComparison.Ordinal);
        }, TimeSpan.FromSeconds(30), "a call refused while the client has no connection");
        Assert.Contains("The run could not be queued", detail, StringComparison.Ordinal);

        await redis.StartProcessAsync();
        var status = HttpStatusCode.ServiceUnavailable;
        await Eventually.HoldsAsync(async () =>
        {
            using var retry = await relay.SendRunAsync(body);
            status = retry.StatusCode;
            return status != HttpStatusCode.ServiceUnavailable;
        }, TimeSpan.FromSeconds(30), "the Ingress reconnected");
        Assert.Equal(HttpStatusCode.Accepted, status);
        Assert.Equal(1, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
    }

    [Fact]
    public async Task Post_StreamKeyOfAnotherType_503NothingWrittenTheLineSaysDamagedNotUnavailable()
    {
        // Redis answers: "Redis is unavailable" (1004) sent operators looking for an outage.
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        await relay.Db.StringSetAsync(RedisKeys.Stream, "damaged");
        var keysBefore = (long)await relay.Db.ExecuteAsync("DBSIZE");

        using var refused = await relay.SendRunAsync(TestRuns.Body(TestRuns.NewRunId()));

        Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
        Assert.Equal("queue_unavailable", await ProblemResponses.ReasonAsync(refused));
        Assert.Equal(keysBefore, (long)await relay.Db.ExecuteAsync("DBSIZE"));
        var line = Assert.Single(relay.Ingress.Logs.Lines, l => l.Contains("[1010]", StringComparison.Ordinal));
        Assert.StartsWith("Error", line, StringComparison.Ordinal);
        Assert.DoesNotContain(relay.Ingress.Logs.Lines, l => l.Contains("[1004]", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Post_RedisFull_503NothingWrittenTheLineSaysFullNotUnavailable_AcceptedOnceThereIsRoom()
    {
        // A full Redis answers: "Redis is unavailable" (1004) sent operators looking for an outage.
        await using var redis = await RedisServer.StartAsync(null, "--maxmemory-policy", "noeviction");
        await using var relay = await Relay.StartAsync(redisConnection: redis.ConnectionString, dispatchers: 0);
        await RedisServer.FillAsync(relay.Db);
        var keysBefore = (long)await relay.Db.ExecuteAsync("DBSIZE");
        var body = TestRuns.Body(TestRuns.NewRunId());

        using (var refused = await relay.SendRunAsync(body))
        {
            Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
            Assert.NotNull(refused.Headers.RetryAfter);
            Assert.Equal("queue_unavailable", await ProblemResponses.ReasonAsync(refused));
        }

        Assert.Equal(keysBefore, (long)await relay.Db.ExecuteAsync("DBSIZE"));
        var line = Assert.Single(relay.Ingress.Logs.Lines, l => l.Contains("[1008]", StringComparison.Ordinal));
        Assert.StartsWith("Error", line, StringComparison.Ordinal);
        Assert.Contains("Redis is out of memory", line, StringComparison.Ordinal);
        Assert.DoesNotContain(relay.Ingress.Logs.Lines, l => l.Contains("[1004]", StringComparison.Ordinal));

        await relay.Db.ExecuteAsync("CONFIG", "SET", "maxmemory", "0");
        using var retry = await relay.SendRunAsync(body);
        Assert.Equal(HttpStatusCode.Accepted, retry.StatusCode);
        Assert.Equal(1, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
    }

    [Fact]
    public async Task Post_SameRunSignedAnewForAnotherWebhook_IsAcceptedSeparately()
    {
        // Idempotency is per target: a sender that signs the run again (its own timestamp) for another webhook means it.
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var body = TestRuns.Body(TestRuns.NewRunId());

        using var firstRequest = TestRuns.Signed(body, at: DateTimeOffset.UtcNow.AddSeconds(-2));
        using var first = await relay.Ingress.Client.SendAsync(firstRequest);
        using var secondRequest = TestRuns.Signed(body, webhook: "other-hook");
        using var second = await relay.Ingress.Client.SendAsync(secondRequest);

        Assert.Equal(HttpStatusCode.Accepted, first.StatusCode);
        Assert.Equal(HttpStatusCode.Accepted, second.StatusCode);
        Assert.Equal(2, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
    }

    [Theory]
    [InlineData("api")]
    [InlineData("openapi")]
    public async Task Post_OrgNamedLikeTheOperatorApiPrefix_IsAWebhookCall(string org)
    {
        // The operator API's routes (/api/*, /openapi/*) come after the webhook route, which names its org first.
        await using var relay = await Relay.StartAsync(dispatchers: 0);

        using var response = await relay.SendRunAsync(TestRuns.Body(TestRuns.NewRunId()), org: org);

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        using var operatorCall = await relay.Ingress.Client.GetAsync(new Uri($"/{org}/_apis/public/distributedtask/webhooks/deploy", UriKind.Relative));
        Assert.Equal(HttpStatusCode.Unauthorized, operatorCall.StatusCode);
    }

    [Theory]
    [InlineData("application/json; charset=utf-8", null)]
    [InlineData("application/json; charset=\"UTF-8\"", "identity")]
    public async Task Post_Utf8CharsetOrIdentityEncoding_IsAccepted(string contentType, string? encoding)
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        using var request = TestRuns.Signed(TestRuns.Body(TestRuns.NewRunId()));
        request.Content!.Headers.ContentType = MediaTypeHeaderValue.Parse(contentType);
        if (encoding is not null)
        {
            request.Content.Headers.ContentEncoding.Add(encoding);
        }

        using var response = await relay.Ingress.Client.SendAsync(request);

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
    }

    [Fact]
    public async Task Post_ConcurrentCopiesOfOneRun_ExactlyOneAccepted()
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var body = TestRuns.Body(TestRuns.NewRunId());

        var responses = await Task.WhenAll(Enumerable.Range(0, 20).Select(_ => relay.SendRunAsync(body)));

        Assert.Equal(1, responses.Count(r => r.StatusCode == HttpStatusCode.Accepted));
        Assert.Equal(19, responses.Count(r => r.StatusCode == HttpStatusCode.OK));
        Assert.Equal(1, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
    }

    public static TheoryData<string, string, int, string> RejectionCases() => new()
    {
        { "no signature", "no-signature", 401, "signature_missing" },
        { "signed with another secret", "wrong-secret", 401, "signature_invalid" },
        { "signature of another body", "other-body", 401, "signature_invalid" },
        { "timestamp 305 s old", "old", 401, "timestamp_too_old" },
        { "timestamp 305 s ahead", "future", 401, "timestamp_in_future" },
        { "v1 signature without timestamp", "no-timestamp", 401, "timestamp_missing" },
        { "non-numeric timestamp", "bad-timestamp", 401, "timestamp_invalid" },
        { "legacy SHA-1 while not allowed", "legacy", 401, "signature_version_unsupported" },
        { "body over 1 MiB", "too-large", 413, "body_too_large" },
        { "text/plain", "text-plain", 415, "unsupported_media_type" },
        { "no content type", "no-content-type", 415, "unsupported_media_type" },
        { "JSON in UTF-16", "utf16", 415, "unsupported_media_type" },
        { "gzip, signed over the plain body", "gzip", 415, "unsupported_content_encoding" },
        { "JSON array", "array", 400, "body_not_json_object" },
        { "JSON scalar", "scalar", 400, "body_not_json_object" },
        { "broken JSON", "broken", 400, "body_invalid_json" },
        { "empty body", "empty", 400, "body_empty" },
        { "org with underscore", "bad-org", 400, "invalid_org" },
        { "webhook with a dot", "bad-webhook", 400, "invalid_webhook" },
        { "run id of 10 KB", "long-run-id", 400, "run_id_invalid" },
        { "run id '..' (a dot segment of Port's API paths)", "dot-run-id", 400, "run_id_invalid" },
    };

    [Theory]
    [MemberData(nameof(RejectionCases))]
    public async Task Post_BadRequest_AnswersProblemWithReasonAndWritesNothing(string description, string kind, int status, string reason)
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        using var request = BuildBadRequest(kind);

        using var response = await relay.Ingress.Client.SendAsync(request);

        Assert.True(status == (int)response.StatusCode, $"{description}: expected {status}, got {(int)response.StatusCode}");
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        var problem = await response.Content.ReadFromJsonAsync<JsonElement>();
        Assert.Equal(reason, problem.GetProperty("reason").GetString());
        Assert.Equal(status, problem.GetProperty("status").GetInt32());
        Assert.False(string.IsNullOrEmpty(problem.GetProperty("detail").GetString()));
        Assert.Equal(0, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
        Assert.Empty(await relay.Redis.GetServer(relay.Redis.GetEndPoints()[0]).KeysAsync(relay.Db.Database).ToListAsync());
    }

    private static HttpRequestMessage BuildBadRequest(string kind)
    {
        var body = TestRuns.Body(TestRuns.NewRunId());
        var now = DateTimeOffset.UtcNow;
        switch (kind)
        {
            case "no-signature":
            {
                var request = TestRuns.Signed(body);
                request.Headers.Remove(PortSignature.SignatureHeader);
                return request;
            }
            case "wrong-secret": return TestRuns.Signed(body, secret: "not-the-secret");
            case "other-body":
            {
                var request = TestRuns.Signed(TestRuns.Body("r_other"));
                request.Content = Json(body);
                return request;
            }
            // 5 s past the 300 s tolerance, as the accepted cases are 5 s inside it: the header has whole
            // seconds and the Ingress reads its clock later, which moved a 301 s case inside the window.
            case "old": return TestRuns.Signed(body, at: now.AddSeconds(-305));
            case "future": return TestRuns.Signed(body, at: now.AddSeconds(305));
            case "no-timestamp":
            {
                var request = TestRuns.Signed(body);
                request.Headers.Remove(PortSignature.TimestampHeader);
                return request;
            }
            case "bad-timestamp": return WithHeaders(body, "soon", PortSignature.ComputeV1(TestRuns.Secret, "soon", body));
            case "legacy": return TestRuns.SignedLegacy(body);
            case "too-large":
            {
                var large = new byte[(1024 * 1024) + 1];
                Array.Fill(large, (byte)' ');
                large[0] = (byte)'{';
                large[^1] = (byte)'}';
                return TestRuns.Signed(large);
            }
            case "text-plain":
            {
                var request = TestRuns.Signed(body);
                request.Content!.Headers.ContentType = new MediaTypeHeaderValue("text/plain");
                return request;
            }
            case "no-content-type":
            {
                var request = TestRuns.Signed(body);
                request.Content!.Headers.ContentType = null;
                return request;
            }
            case "utf16":
            {
                var request = TestRuns.Signed(body);
                request.Content!.Headers.ContentType = MediaTypeHeaderValue.Parse("application/json; charset=utf-16");
                return request;
            }
            case "gzip":
            {
                // Signed over the plain body, as a proxy that compresses on the way would leave it: before, 401 signature_invalid.
                var request = TestRuns.Signed(body);
                var compressed = new MemoryStream();
                using (var gzip = new System.IO.Compression.GZipStream(compressed, System.IO.Compression.CompressionLevel.Fastest, leaveOpen: true))
                {
                    gzip.Write(body);
                }
                request.Content = Json(compressed.ToArray());
                request.Content.Headers.ContentEncoding.Add("gzip");
                return request;
            }
            case "array": return TestRuns.Signed("[1,2]"u8.ToArray());
            case "scalar": return TestRuns.Signed("\"run\""u8.ToArray());
            case "broken": return TestRuns.Signed("{\"context\":"u8.ToArray());
            case "empty": return TestRuns.Signed([]);
            case "bad-org": return TestRuns.Signed(body, org: "con_toso");
            case "bad-webhook": return TestRuns.Signed(body, webhook: "de.ploy");
            case "long-run-id": return TestRuns.Signed(TestRuns.Body("r_" + new string('x', 10 * 1024)));
            case "dot-run-id": return TestRuns.Signed(TestRuns.Body(".."));
            default: throw new ArgumentOutOfRangeException(nameof(kind), kind, null);
        }
    }

    private static ByteArrayContent Json(byte[] body)
    {
        var content = new ByteArrayContent(body);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        return content;
    }

    private static HttpRequestMessage WithHeaders(byte[] body, string timestamp, string signature)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, TestRuns.Path()) { Content = Json(body) };
        request.Headers.TryAddWithoutValidation(PortSignature.TimestampHeader, timestamp);
        request.Headers.TryAddWithoutValidation(PortSignature.SignatureHeader, signature);
        return request;
    }

    [Theory]
    [InlineData(-280)]
    [InlineData(280)]
    public async Task Post_TimestampWithinTolerance_IsAccepted(int offsetSeconds)
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        using var request = TestRuns.Signed(TestRuns.Body(TestRuns.NewRunId()), at: DateTimeOffset.UtcNow.AddSeconds(offsetSeconds));

        using var response = await relay.Ingress.Client.SendAsync(request);

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
    }

    [Fact]
    public async Task Post_ToleranceConfigured_AppliesTheConfiguredWindow()
    {
        await using var relay = await Relay.StartAsync(c => c["Ingress:TimestampToleranceSeconds"] = "10", dispatchers: 0);
        using var request = TestRuns.Signed(TestRuns.Body(TestRuns.NewRunId()), at: DateTimeOffset.UtcNow.AddSeconds(-60));

        using var response = await relay.Ingress.Client.SendAsync(request);

        Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
    }

    [Fact]
    public async Task Post_LegacySha1WhenAllowed_IsAccepted()
    {
        await using var relay = await Relay.StartAsync(c => c["Ingress:AllowLegacySha1Signature"] = "true", dispatchers: 0);
        var body = TestRuns.Body(TestRuns.NewRunId());
        using var request = TestRuns.SignedLegacy(body, lowerCaseHex: true);

        using var response = await relay.Ingress.Client.SendAsync(request);

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
    }

    [Fact]
    public async Task Post_SignedWithPreviousSecretDuringRotation_IsAccepted()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Port:ClientSecret"] = "the-new-secret";
            c["Port:PreviousClientSecret"] = TestRuns.Secret;
        }, dispatchers: 0);

        using var response = await relay.SendRunAsync(TestRuns.Body(TestRuns.NewRunId()));

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
    }

    [Fact]
    public async Task Post_TargetNotInConfiguredList_Answers404AndWritesNothing()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["AzureDevOps:Targets:0:Org"] = TestRuns.Org;
            c["AzureDevOps:Targets:0:Webhook"] = "allowed-hook";
        }, dispatchers: 0);

        using var rejected = await relay.SendRunAsync(TestRuns.Body(TestRuns.NewRunId()), webhook: "other-hook");
        using var accepted = await relay.SendRunAsync(TestRuns.Body(TestRuns.NewRunId()), webhook: "allowed-hook");
        // Without a valid signature the list is not revealed: the caller learns only that it is not Port.
        using var unsignedRequest = TestRuns.Signed(TestRuns.Body(TestRuns.NewRunId()), webhook: "other-hook", secret: "not-the-secret");
        using var unsigned = await relay.Ingress.Client.SendAsync(unsignedRequest);

        Assert.Equal(HttpStatusCode.NotFound, rejected.StatusCode);
        Assert.Equal("unknown_target", await ProblemResponses.ReasonAsync(rejected));
        Assert.Equal(HttpStatusCode.Accepted, accepted.StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, unsigned.StatusCode);
        Assert.Equal(1, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
    }

    [Theory]
    [InlineData("application/json; charset=utf-8", HttpStatusCode.Accepted)]
    [InlineData("application/vnd.getport.run+json", HttpStatusCode.Accepted)]
    [InlineData("APPLICATION/JSON", HttpStatusCode.Accepted)]
    [InlineData("text/json", HttpStatusCode.UnsupportedMediaType)]
    [InlineData("application/jsonx", HttpStatusCode.UnsupportedMediaType)]
    public async Task Post_ContentType_JsonAndItsSuffixedTypesAreAccepted(string contentType, HttpStatusCode expected)
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        using var request = TestRuns.Signed(TestRuns.Body(TestRuns.NewRunId()));
        request.Content!.Headers.ContentType = System.Net.Http.Headers.MediaTypeHeaderValue.Parse(contentType);

        using var response = await relay.Ingress.Client.SendAsync(request);

        Assert.Equal(expected, response.StatusCode);
        Assert.Equal(expected == HttpStatusCode.Accepted ? 1 : 0, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
    }

    [Fact]
    public async Task Post_ApiVersionQuery_IsIgnored()
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var body = TestRuns.Body(TestRuns.NewRunId());
        var timestamp = DateTimeOffset.UtcNow.ToUnixTimeSeconds().ToString(CultureInfo.InvariantCulture);
        using var request = new HttpRequestMessage(HttpMethod.Post, $"{TestRuns.Org}/_apis/public/distributedtask/webhooks/{TestRuns.Webhook}") { Content = Json(body) };
        request.Headers.TryAddWithoutValidation(PortSignature.TimestampHeader, timestamp);
        request.Headers.TryAddWithoutValidation(PortSignature.SignatureHeader, PortSignature.ComputeV1(TestRuns.Secret, timestamp, body));

        using var response = await relay.Ingress.Client.SendAsync(request);

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
    }

    [Fact]
    public async Task Post_RedisUnreachable_Answers503WithRetryAfterNever202()
    {
        using var closed = new ClosedPort();
        await using var ingress = await TestHost.StartIngressAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = closed.RedisConnectionString,
            ["Port:ClientSecret"] = TestRuns.Secret,
        });

        using var response = await TestRuns.SendAsync(ingress.Client, TestRuns.Body(TestRuns.NewRunId()));

        Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
        Assert.NotNull(response.Headers.RetryAfter);
        Assert.Equal("queue_unavailable", await ProblemResponses.ReasonAsync(response));
    }

    [Fact]
    public async Task Post_RedisUnreachable_LogsOneErrorForManyCalls()
    {
        // Every call fails the same way while Redis is away: an Error with its exception per call was a flood.
        using var closed = new ClosedPort();
        // The clock stands still: each call waits up to a second for the connect, and four could span two windows.
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await using var ingress = await TestHost.StartIngressAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = closed.RedisConnectionString,
            ["Port:ClientSecret"] = TestRuns.Secret,
        }, s => s.AddSingleton<TimeProvider>(clock));

        for (var i = 0; i < 4; i++)
        {
            using var response = await TestRuns.SendAsync(ingress.Client, TestRuns.Body(TestRuns.NewRunId()));
            Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
        }

        Assert.Single(ingress.Logs.Lines, l => l.Contains("[1004]", StringComparison.Ordinal));
        // The Error stands for the refusals too: an Information refusal line beside it said the same thing again.
        Assert.DoesNotContain(ingress.Logs.Lines, l => l.StartsWith("Information", StringComparison.Ordinal) && l.Contains("[1003]", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Post_ClientResetsMidBody_IsRefusedQuietlyNotAnError()
    {
        // A reset before the signature is checked: an Error line with a stack trace and a 500 each, before this fix.
        // Kestrel reports it as a ConnectionResetException or as an early end of the body, depending on when the reset
        // lands: a few resets at different moments meet the first.
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        foreach (var delay in new[] { 0, 100, 500 })
        {
            using var client = new TcpClient();
            await client.ConnectAsync(relay.Ingress.BaseAddress.Host, relay.Ingress.BaseAddress.Port);
            await client.GetStream().WriteAsync(Encoding.ASCII.GetBytes(
                "POST /contoso/_apis/public/distributedtask/webhooks/deploy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" +
                "X-Port-Timestamp: 1\r\nX-Port-Signature: v1,x\r\nContent-Length: 1000\r\n\r\n{\"a\":"));
            await Task.Delay(delay);
            // Linger 0: the close sends a reset, not a FIN.
            client.Client.LingerState = new LingerOption(true, 0);
            client.Client.Close();
        }

        await Eventually.HoldsAsync(() => Task.FromResult(relay.Ingress.Logs.Lines.Count(l =>
                l.StartsWith("Error", StringComparison.Ordinal) || (l.Contains("[1005]", StringComparison.Ordinal) && l.Contains("body_unreadable", StringComparison.Ordinal))) >= 2),
            TimeSpan.FromSeconds(10), "the Ingress saw the resets");
        await Task.Delay(500);
        Assert.DoesNotContain(relay.Ingress.Logs.Lines, l => l.StartsWith("Error", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Post_RedisClientRefusesTheCommand_Answers503NothingAccepted()
    {
        // The client refuses a command before sending it (RedisCommandException, not a RedisException): here EVAL
        // disabled in its command map, as for a managed Redis without scripting; also a write routed to a replica.
        await using var lease = await SharedRedis.LeaseAsync();
        await using var ingress = await TestHost.StartIngressAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = lease.ConnectionString + ",$EVAL=,$EVALSHA=",
            ["Port:ClientSecret"] = TestRuns.Secret,
        });

        using var response = await TestRuns.SendAsync(ingress.Client, TestRuns.Body(TestRuns.NewRunId()));

        Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
        Assert.NotNull(response.Headers.RetryAfter);
        var problem = await response.Content.ReadFromJsonAsync<JsonElement>();
        Assert.Equal("queue_unavailable", problem.GetProperty("reason").GetString());
        Assert.Contains("nothing was accepted", problem.GetProperty("detail").GetString(), StringComparison.Ordinal);
        Assert.Contains(ingress.Logs.Lines, l => l.Contains("RedisCommandException", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Start_WithoutPortClientSecret_FailsNamingTheKey()
    {
        var error = await Assert.ThrowsAnyAsync<Exception>(() => TestHost.StartIngressAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false",
        }));
        Assert.Contains("Port:ClientSecret", error.ToString(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("{\"inputs\":{\"token\":\"x\",\"token\":\"s3cr3t-value\"}}", "token", null)] // the parser gives no position
    [InlineData("{\"inputs\":{\"token\":s3cr3t-value}}", "s3cr3t", " at line 1, byte 20 of that line")]
    [InlineData("{\"inputs\":\n{\"token\":tru3cret}}", "tru3", " at line 2, byte 13 of that line")] // where the literal goes wrong
    public async Task Post_InvalidJson_TheDetailGivesThePositionNotTheContent(string json, string content, string? at)
    {
        // .NET's parser messages quote the body (the repeated property, the bad literal), which may hold secret inputs.
        await using var relay = await Relay.StartAsync(dispatchers: 0);

        using var response = await relay.SendRunAsync(Encoding.UTF8.GetBytes(json));

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        var problem = await response.Content.ReadFromJsonAsync<JsonElement>();
        Assert.Equal("body_invalid_json", problem.GetProperty("reason").GetString());
        var detail = problem.GetProperty("detail").GetString()!;
        Assert.DoesNotContain(content, detail, StringComparison.Ordinal);
        Assert.True(detail.StartsWith($"The body is not valid JSON{at}: a syntax error", StringComparison.Ordinal), detail);
    }

    [Fact]
    public async Task Start_SecretsWithATrailingNewlineOrSpace_FailNamingEachKey()
    {
        // Read from a file, a secret keeps its newline: the Ingress started, and refused every signed call 401.
        var error = (await Assert.ThrowsAnyAsync<Exception>(() => TestHost.StartIngressAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false",
            ["Port:ClientSecret"] = TestRuns.Secret + "\n",
            ["Port:PreviousClientSecret"] = " " + TestRuns.Secret,
            ["AzureDevOps:Targets:0:Org"] = "contoso",
            ["AzureDevOps:Targets:0:Webhook"] = "deploy",
            ["AzureDevOps:Targets:0:Secret"] = "target-secret\r\n",
        }))).ToString();
        Assert.Contains("Port:ClientSecret begins or ends with white space", error, StringComparison.Ordinal);
        Assert.Contains("Port:PreviousClientSecret begins or ends with white space", error, StringComparison.Ordinal);
        Assert.Contains("AzureDevOps:Targets:0:Secret begins or ends with white space", error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Start_InvalidOptions_ReportsEveryErrorAtOnce()
    {
        var error = await Assert.ThrowsAnyAsync<Exception>(() => TestHost.StartIngressAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false",
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["AzureDevOps:Targets:0:Org"] = "bad org",
            ["AzureDevOps:Targets:0:Webhook"] = "bad/hook",
            ["AzureDevOps:Targets:1:Org"] = "contoso",
            ["AzureDevOps:Targets:1:Webhook"] = "deploy",
            ["AzureDevOps:Targets:2:Org"] = "Contoso",
            ["AzureDevOps:Targets:2:Webhook"] = "DEPLOY",
            ["Admin:ApiKey"] = "admin",
            // Read early by Kestrel's limits, yet reported with the rest.
            ["Ingress:MaxConcurrentCalls"] = "-1",
            ["Ingress:WaitForReplicas"] = "17",
            ["Ingress:ReplicaWaitMilliseconds"] = "5000",
        }));
        Assert.Contains("AzureDevOps:Targets:0:Org", error.ToString(), StringComparison.Ordinal);
        Assert.Contains("AzureDevOps:Targets:0:Webhook", error.ToString(), StringComparison.Ordinal);
        Assert.Contains("AzureDevOps:Targets:2 repeats the target 'Contoso/DEPLOY' of AzureDevOps:Targets:1", error.ToString(), StringComparison.Ordinal);
        Assert.Contains("Admin:ApiKey must be at least 16 characters", error.ToString(), StringComparison.Ordinal);
        Assert.Contains("Ingress:MaxConcurrentCalls", error.ToString(), StringComparison.Ordinal);
        Assert.Contains("Ingress:WaitForReplicas must be between 0", error.ToString(), StringComparison.Ordinal);
        Assert.Contains("Ingress:ReplicaWaitMilliseconds must be between 10 and 2000", error.ToString(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("", 2000, true)] // asyncTimeout unset: 5 s
    [InlineData(",asyncTimeout=3000", 2000, true)]
    [InlineData(",asyncTimeout=3000", 2001, false)]
    [InlineData(",asyncTimeout=1000", 500, true)] // half of a short timeout
    [InlineData(",asyncTimeout=1000", 501, false)]
    [InlineData(",syncTimeout=600", 301, false)] // asyncTimeout follows syncTimeout unless set
    public async Task Start_ReplicaWaitAgainstTheRedisTimeout_RefusedWithoutTimeLeftForTheCommandsBehindIt(string timeout, int waitMilliseconds, bool starts)
    {
        var config = new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false" + timeout,
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Ingress:WaitForReplicas"] = "1",
            ["Ingress:ReplicaWaitMilliseconds"] = waitMilliseconds.ToString(System.Globalization.CultureInfo.InvariantCulture),
        };
        if (starts)
        {
            await using var ingress = await TestHost.StartIngressAsync(config);
            return;
        }
        var error = (await Assert.ThrowsAnyAsync<Exception>(() => TestHost.StartIngressAsync(config))).ToString();
        Assert.Contains($"Ingress:ReplicaWaitMilliseconds ({waitMilliseconds}) must be at most {waitMilliseconds - 1} with the Redis connection's asyncTimeout", error,
            StringComparison.Ordinal);
    }

    [Fact]
    public async Task Start_ReplicaWaitAboveTheRedisTimeout_AllowedWithoutWaiting()
    {
        await using var ingress = await TestHost.StartIngressAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false,asyncTimeout=100",
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Ingress:ReplicaWaitMilliseconds"] = "1000",
        });
    }

    [Theory]
    [InlineData("/health")]
    [InlineData("/alive")]
    public async Task Get_HealthEndpointsOutsideDevelopment_AreServed(string path)
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);

        // Polled: /health's Redis check can miss its timeout once on a loaded machine.
        await Eventually.HoldsAsync(async () =>
        {
            using var response = await relay.Ingress.Client.GetAsync(path);
            return response.StatusCode == HttpStatusCode.OK && await response.Content.ReadAsStringAsync() == "Healthy";
        }, TimeSpan.FromSeconds(10), $"{path} answers 200 Healthy");
    }
}

public class HealthTests
{
    [Fact]
    public async Task Health_RedisUnreachable_IsUnhealthyWhileAliveStaysHealthy()
    {
        using var closed = new ClosedPort();
        await using var ingress = await TestHost.StartIngressAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = closed.RedisConnectionString,
            ["Port:ClientSecret"] = TestRuns.Secret,
        });

        using var health = await ingress.Client.GetAsync("/health");
        using var alive = await ingress.Client.GetAsync("/alive");

        Assert.Equal(HttpStatusCode.ServiceUnavailable, health.StatusCode);
        Assert.Equal("Unhealthy", await health.Content.ReadAsStringAsync());
        Assert.Equal(HttpStatusCode.OK, alive.StatusCode);
    }
}
