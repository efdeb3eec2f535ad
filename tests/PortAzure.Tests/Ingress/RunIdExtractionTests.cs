using System.Net;
using System.Net.Http.Json;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using PortAzure.Ingress.Webhooks;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Ingress;

public class RunIdExtractionTests
{
    [Theory]
    [InlineData("""{"context":{"runId":"r_ctx"}}""", "r_ctx")]
    [InlineData("""{"port_context":{"runId":"r_port"}}""", "r_port")]
    [InlineData("""{"run_id":"r_flat"}""", "r_flat")]
    [InlineData("""{"run":{"id":"r_nested"}}""", "r_nested")]
    [InlineData("""{"run_id":"r_second","context":{"runId":"r_first"}}""", "r_first")]
    [InlineData("""{"context":{"runId":42}}""", null)]
    [InlineData("""{"context":"r_not_an_object"}""", null)]
    [InlineData("""{"other":1}""", null)]
    public void Find_KnownLocations_ReturnsTheRunId(string json, string? expected)
    {
        using var document = JsonDocument.Parse(json);
        Assert.Equal(expected, RunIdExtractor.Find(document.RootElement));
    }

    [Theory]
    [InlineData("""{"context":{"runId":"RUN"}}""")]
    [InlineData("""{"port_context":{"runId":"RUN"}}""")]
    [InlineData("""{"run_id":"RUN"}""")]
    [InlineData("""{"run":{"id":"RUN"}}""")]
    public async Task Post_RunIdInEachLocation_IsTheIdempotencyKey(string template)
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var runId = TestRuns.NewRunId();

        using var response = await relay.SendRunAsync(Encoding.UTF8.GetBytes(template.Replace("RUN", runId, StringComparison.Ordinal)));

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        Assert.Equal(runId, (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("runId").GetString());
        var entry = DeliveryEntry.FromStreamEntry((await relay.Db.StreamRangeAsync(RedisKeys.Stream)).Single())!;
        Assert.Equal(runId, entry.IdempotencyKey);
        Assert.Equal(runId, entry.RunId);
    }

    [Fact]
    public async Task Post_IdempotencyKeyHeader_KeysARunWithoutRunId()
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var key = "key-" + Guid.NewGuid().ToString("N");
        using var first = TestRuns.Signed(Encoding.UTF8.GetBytes("""{"action":"a","n":1}"""));
        first.Headers.Add("Idempotency-Key", key);
        using var second = TestRuns.Signed(Encoding.UTF8.GetBytes("""{"action":"a","n":2}"""));
        second.Headers.Add("Idempotency-Key", key);

        using var firstResponse = await relay.Ingress.Client.SendAsync(first);
        using var secondResponse = await relay.Ingress.Client.SendAsync(second);

        Assert.Equal(HttpStatusCode.Accepted, firstResponse.StatusCode);
        Assert.Equal(HttpStatusCode.OK, secondResponse.StatusCode);
        var entry = DeliveryEntry.FromStreamEntry((await relay.Db.StreamRangeAsync(RedisKeys.Stream)).Single())!;
        Assert.Equal(key, entry.IdempotencyKey);
    }

    [Fact]
    public async Task Post_SignedRunReplayedWithNewIdempotencyKeys_IsQueuedOnce()
    {
        // The header is not signed: it must not turn one signed run into several deliveries.
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var body = TestRuns.Body(TestRuns.NewRunId());
        var statuses = new List<HttpStatusCode>();
        foreach (var key in new[] { "a", "b", "c" })
        {
            using var request = TestRuns.Signed(body);
            request.Headers.Add("Idempotency-Key", "key-" + key);
            using var response = await relay.Ingress.Client.SendAsync(request);
            statuses.Add(response.StatusCode);
        }

        Assert.Equal([HttpStatusCode.Accepted, HttpStatusCode.OK, HttpStatusCode.OK], statuses);
        Assert.Equal(1, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
    }

    [Fact]
    public async Task Post_CallWithoutRunIdReplayedWithNewIdempotencyKeys_IsQueuedOnce()
    {
        // Without a run id the header is the key; a captured call sent again under other header values (inside
        // the timestamp tolerance) is still the same signed call.
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var body = NoRunIdBody();
        var at = DateTimeOffset.UtcNow;

        var answers = await SendEachAsync(relay, () => TestRuns.Signed(body, at: at), "key-a", "key-b", "key-c");

        await AssertQueuedOnceAsync(relay, answers);
    }

    [Theory]
    [InlineData("key-first", null)]
    [InlineData(null, "key-second")]
    public async Task Post_CallWithoutRunIdReplayedWithTheHeaderAddedOrRemoved_IsQueuedOnce(string? firstKey, string? secondKey)
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var body = NoRunIdBody();
        var at = DateTimeOffset.UtcNow;

        var answers = await SendEachAsync(relay, () => TestRuns.Signed(body, at: at), firstKey, secondKey);

        await AssertQueuedOnceAsync(relay, answers);
    }

    [Fact]
    public async Task Post_SameBodyWithoutRunIdSignedAnewWithAnotherKey_IsASecondRun()
    {
        // A sender that means a second run signs it again (a new timestamp) and gives it its own key.
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var body = NoRunIdBody();
        var timestamps = new Queue<DateTimeOffset>([DateTimeOffset.UtcNow.AddSeconds(-2), DateTimeOffset.UtcNow]);

        var answers = await SendEachAsync(relay, () => TestRuns.Signed(body, at: timestamps.Dequeue()), "key-1", "key-2");

        Assert.Equal([HttpStatusCode.Accepted, HttpStatusCode.Accepted], answers.Select(a => a.Status));
        Assert.Equal(2, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
        var guards = new List<TimeSpan>();
        await foreach (var key in relay.Redis.GetServers()[0].KeysAsync(relay.Db.Database, RedisKeys.Prefix + "replay:*"))
        {
            guards.Add((await relay.Db.KeyTimeToLiveAsync(key))!.Value);
        }
        // Kept while the timestamp is accepted (300 s either side, and a minute for clock skew), not for the idempotency window.
        Assert.Equal(2, guards.Count);
        Assert.All(guards, ttl => Assert.InRange(ttl, TimeSpan.FromSeconds(650), TimeSpan.FromSeconds(660)));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Post_SignedCallReplayedToAnotherWebhook_IsADuplicateOfTheFirst(bool withRunId)
    {
        // Port's signature does not cover the path: the same signed call sent to another webhook (and, without a
        // run id, under another Idempotency-Key) must not start a second pipeline run.
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var body = withRunId ? TestRuns.Body(TestRuns.NewRunId()) : NoRunIdBody();
        var at = DateTimeOffset.UtcNow;
        var webhooks = new Queue<string>(["deploy", "other-hook", "DEPLOY"]);

        var answers = await SendEachAsync(relay, () => TestRuns.Signed(body, webhook: webhooks.Dequeue(), at: at), "key-a", "key-b", "key-c");

        await AssertQueuedOnceAsync(relay, answers);
    }

    [Fact]
    public async Task Post_RetryAnsweredAsDuplicate_ReplayedToAnotherWebhook_IsADuplicateToo()
    {
        // Port's retry, signed anew, is a duplicate of the first call; captured and sent to another webhook within
        // the tolerance, it must find its own signature taken, not a free idempotency key there.
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var body = TestRuns.Body(TestRuns.NewRunId());
        var now = DateTimeOffset.UtcNow;
        var times = new Queue<(string Webhook, DateTimeOffset At)>([("deploy", now.AddSeconds(-30)), ("deploy", now), ("other-hook", now)]);

        var answers = await SendEachAsync(relay, () =>
        {
            var (webhook, at) = times.Dequeue();
            return TestRuns.Signed(body, webhook: webhook, at: at);
        }, null, null, null);

        await AssertQueuedOnceAsync(relay, answers);
    }

    [Fact]
    public async Task Post_CallAnsweredAsDuplicateByItsHeader_ReplayedWithAnotherHeader_IsADuplicateToo()
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var at = DateTimeOffset.UtcNow;
        var first = NoRunIdBody();
        var second = NoRunIdBody();
        var bodies = new Queue<byte[]>([first, second, second]);

        // The second body reuses the first's key (a duplicate); replayed under a new key it is still that call.
        var answers = await SendEachAsync(relay, () => TestRuns.Signed(bodies.Dequeue(), at: at), "key-1", "key-1", "key-2");

        await AssertQueuedOnceAsync(relay, answers);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Post_LegacySignedCallReplayedToAnotherWebhook_IsQueuedOnce(bool withRunId)
    {
        // A SHA-1 signature covers neither the path nor a time: the body is the call, for every target.
        await using var relay = await Relay.StartAsync(c => c["Ingress:AllowLegacySha1Signature"] = "true", dispatchers: 0);
        var body = withRunId ? TestRuns.Body(TestRuns.NewRunId()) : NoRunIdBody();
        var webhooks = new Queue<string>(["deploy", "other-hook"]);

        var answers = await SendEachAsync(relay, () =>
        {
            var request = TestRuns.SignedLegacy(body, lowerCaseHex: true);
            request.RequestUri = new Uri(TestRuns.Path(webhook: webhooks.Dequeue()), UriKind.Relative);
            return request;
        }, null, null);

        await AssertQueuedOnceAsync(relay, answers);
        // Without a timestamp nothing ages the call out: its guard lives as long as the idempotency key (168 h by default).
        var ttl = await relay.Db.KeyTimeToLiveAsync(RedisKeys.SignedCall("legacy:" + Convert.ToHexStringLower(SHA256.HashData(body))));
        Assert.InRange(ttl!.Value, TimeSpan.FromHours(168) - TimeSpan.FromMinutes(1), TimeSpan.FromHours(168));
    }

    [Fact]
    public async Task Post_LegacyAllowed_DispatchersAzureSignatureOfAV1CallSentToAnotherWebhook_IsQueuedOnce()
    {
        // The Dispatcher signs its Azure POST with HMAC-SHA1 of the body under Port's secret: with legacy signatures
        // accepted, a copy of that POST was a valid call of its own, and a second run on any other webhook.
        await using var relay = await Relay.StartAsync(c => c["Ingress:AllowLegacySha1Signature"] = "true", dispatchers: 0);
        var body = TestRuns.Body(TestRuns.NewRunId());
        var calls = new Queue<Func<HttpRequestMessage>>([
            () => TestRuns.Signed(body),
            () =>
            {
                // As the Dispatcher signed its POST to Azure (AzureWebhookClient), the header's name being Port's too by default.
                var request = new HttpRequestMessage(HttpMethod.Post, TestRuns.Path(webhook: "other-hook")) { Content = new ByteArrayContent(body) };
                request.Content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
                request.Headers.Add(PortAzure.Signing.PortSignature.SignatureHeader,
                    PortAzure.Signing.AzureSignature.Compute(body, System.Text.Encoding.UTF8.GetBytes(TestRuns.Secret), PortAzure.Signing.SignatureFormat.Hex));
                return request;
            },
        ]);

        var answers = await SendEachAsync(relay, () => calls.Dequeue()(), null, null);

        await AssertQueuedOnceAsync(relay, answers);
    }

    [Fact]
    public async Task Post_LegacyAllowedAndTheWindowShorterThanTheTimestampsTolerance_GuardLastsWhileTheTimestampIsAccepted()
    {
        // Guarded by its body for the idempotency window only, a signed call could be sent to another webhook as a new run
        // once the window (1 h here) was over, while its timestamp (accepted for a day either way) still was.
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Ingress:AllowLegacySha1Signature"] = "true";
            c["Ingress:IdempotencyWindowHours"] = "1";
            c["Ingress:TimestampToleranceSeconds"] = "86400";
        }, dispatchers: 0);
        var body = TestRuns.Body(TestRuns.NewRunId());

        using var response = await relay.Ingress.Client.SendAsync(TestRuns.Signed(body));

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var ttl = await relay.Db.KeyTimeToLiveAsync(RedisKeys.SignedCall("legacy:" + Convert.ToHexStringLower(SHA256.HashData(body))));
        Assert.InRange(ttl!.Value, TimeSpan.FromHours(48), TimeSpan.FromHours(48) + TimeSpan.FromMinutes(1));
    }

    [Fact]
    public async Task Post_EmptyIdempotencyKeyWithoutRunId_IsKeyedByTheBody()
    {
        // A template that always sends the header, empty when it has no value, was refused 400 run_id_invalid.
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var body = """{"action":"deploy","properties":{"version":"1.2.3"}}"""u8.ToArray();
        using var request = TestRuns.Signed(body);
        request.Headers.TryAddWithoutValidation("Idempotency-Key", "");

        using var response = await relay.Ingress.Client.SendAsync(request);

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var entry = DeliveryEntry.FromStreamEntry((await relay.Db.StreamRangeAsync(RedisKeys.Stream)).Single())!;
        Assert.Equal("sha256:" + Convert.ToHexStringLower(SHA256.HashData(body)), entry.IdempotencyKey);
    }

    [Fact]
    public async Task Post_MalformedIdempotencyKeyBesideARunId_IsIgnored()
    {
        // The header counts only without a run id; a proxy's stray copy must not block a signed run.
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var runId = TestRuns.NewRunId();
        using var request = TestRuns.Signed(TestRuns.Body(runId));
        request.Headers.TryAddWithoutValidation("Idempotency-Key", ["key-one", "key-two"]);

        using var response = await relay.Ingress.Client.SendAsync(request);

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var entry = DeliveryEntry.FromStreamEntry((await relay.Db.StreamRangeAsync(RedisKeys.Stream)).Single())!;
        Assert.Equal(runId, entry.IdempotencyKey);
    }

    [Fact]
    public async Task Post_LegacySignedCallWithoutRunIdReplayedWithNewIdempotencyKey_IsQueuedOnce()
    {
        // A SHA-1 signature covers the body alone: nothing tells a replay from a new call with the same body.
        await using var relay = await Relay.StartAsync(c => c["Ingress:AllowLegacySha1Signature"] = "true", dispatchers: 0);
        var body = NoRunIdBody();
        var answers = await SendEachAsync(relay, () => TestRuns.SignedLegacy(body, lowerCaseHex: true), "key-a", "key-b");

        await AssertQueuedOnceAsync(relay, answers);
    }

    [Fact]
    public async Task Post_NoRunIdAnywhere_KeysOnTheBodyHash()
    {
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        var body = NoRunIdBody();

        using var first = await relay.SendRunAsync(body);
        using var second = await relay.SendRunAsync(body);

        Assert.Equal(HttpStatusCode.Accepted, first.StatusCode);
        Assert.Equal(HttpStatusCode.OK, second.StatusCode);
        var entry = DeliveryEntry.FromStreamEntry((await relay.Db.StreamRangeAsync(RedisKeys.Stream)).Single())!;
        Assert.Equal("sha256:" + Convert.ToHexStringLower(SHA256.HashData(body)), entry.IdempotencyKey);
        Assert.Null(entry.RunId);
    }

    /// <summary>The first call was queued; every other was answered 200 duplicate, naming the same delivery; one entry.</summary>
    private static async Task AssertQueuedOnceAsync(Relay relay, List<(HttpStatusCode Status, string? DeliveryId)> answers)
    {
        Assert.Equal([HttpStatusCode.Accepted, .. Enumerable.Repeat(HttpStatusCode.OK, answers.Count - 1)], answers.Select(a => a.Status));
        Assert.Single(answers.Select(a => a.DeliveryId).Distinct());
        Assert.Equal(1, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
    }

    private static byte[] NoRunIdBody() => Encoding.UTF8.GetBytes($$"""{"action":"no_run","nonce":"{{Guid.NewGuid():N}}"}""");

    /// <summary>Sends one request per Idempotency-Key value (null: no header), each made by <paramref name="sign"/>.</summary>
    private static async Task<List<(HttpStatusCode Status, string? DeliveryId)>> SendEachAsync(Relay relay, Func<HttpRequestMessage> sign, params string?[] keys)
    {
        var answers = new List<(HttpStatusCode, string?)>();
        foreach (var key in keys)
        {
            using var request = sign();
            if (key is not null)
            {
                request.Headers.Add("Idempotency-Key", key);
            }
            using var response = await relay.Ingress.Client.SendAsync(request);
            var answer = await response.Content.ReadFromJsonAsync<JsonElement>();
            answers.Add((response.StatusCode, answer.TryGetProperty("deliveryId", out var id) ? id.GetString() : null));
        }
        return answers;
    }
}
