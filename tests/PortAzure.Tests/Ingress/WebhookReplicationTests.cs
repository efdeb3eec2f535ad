using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;

namespace PortAzure.Tests.Ingress;

/// <summary>Ingress:WaitForReplicas: a run is answered only once a replica holds it, on a real primary and replica.</summary>
public class WebhookReplicationTests
{
    private static void WaitForOneReplica(Dictionary<string, string?> config)
    {
        config["Ingress:WaitForReplicas"] = "1";
        // Long enough for a replica in sync on a loaded machine; a paused one costs each call this much.
        config["Ingress:ReplicaWaitMilliseconds"] = "1000";
    }

    [Fact]
    public async Task Post_ReplicaInSync_Answers202OnceTheReplicaHoldsTheRun()
    {
        await using var pair = await ReplicatedRelay.StartAsync();
        var relay = pair.Relay;
        var runId = TestRuns.NewRunId();

        using var response = await relay.SendRunAsync(TestRuns.Body(runId));

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var deliveryId = (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("deliveryId").GetString()!;
        Assert.Equal($"/api/deliveries/{deliveryId}", response.Headers.Location?.ToString());
        Assert.True(await pair.ReplicaHoldsAsync(runId));
    }

    [Fact]
    public async Task Post_ReplicaPaused_Answers503QueuedUntilTheReplicaCatchesUpThen200Duplicate()
    {
        await using var pair = await ReplicatedRelay.StartAsync();
        var relay = pair.Relay;
        var runId = TestRuns.NewRunId();
        var body = TestRuns.Body(runId);

        pair.Replica.Pause();
        string detail;
        try
        {
            using var refused = await relay.SendRunAsync(body);

            Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
            Assert.Equal("application/problem+json", refused.Content.Headers.ContentType?.MediaType);
            var problem = await refused.Content.ReadFromJsonAsync<JsonElement>();
            Assert.Equal("replication_unconfirmed", problem.GetProperty("reason").GetString());
            Assert.NotNull(refused.Headers.RetryAfter);
            Assert.Null(refused.Headers.Location);
            detail = problem.GetProperty("detail").GetString()!;

            // A duplicate's 200 would say as much as the 202: it waits too.
            using var again = await relay.SendRunAsync(body);
            Assert.Equal(HttpStatusCode.ServiceUnavailable, again.StatusCode);
            Assert.Equal("replication_unconfirmed", await ProblemResponses.ReasonAsync(again));
        }
        finally
        {
            pair.Replica.Resume();
        }

        // Queued all the same (the Dispatcher delivers it unless the primary is lost first), as the answer says.
        var deliveryId = Assert.Single(await relay.Db.SetMembersAsync(RedisKeys.RunIndex(runId))).ToString();
        Assert.Contains(deliveryId, detail, StringComparison.Ordinal);
        Assert.Equal(DeliveryStates.Queued, (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State));
        Assert.Single(relay.Ingress.Logs.Lines, l => l.StartsWith("Error", StringComparison.Ordinal) && l.Contains("[1009]", StringComparison.Ordinal));

        // Sent again until the replica has caught up, as a retrying client would.
        JsonElement duplicate = default;
        await Eventually.HoldsAsync(async () =>
        {
            using var retry = await relay.SendRunAsync(body);
            if (retry.StatusCode == HttpStatusCode.ServiceUnavailable)
            {
                Assert.Equal("replication_unconfirmed", await ProblemResponses.ReasonAsync(retry));
                return false;
            }
            Assert.Equal(HttpStatusCode.OK, retry.StatusCode);
            duplicate = await retry.Content.ReadFromJsonAsync<JsonElement>();
            return true;
        }, TimeSpan.FromSeconds(20), "a retry answered 200 duplicate");
        Assert.Equal(deliveryId, duplicate.GetProperty("deliveryId").GetString());
        Assert.True(duplicate.GetProperty("duplicate").GetBoolean());
        Assert.Equal(1, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
    }

    [Fact]
    public async Task Post_DuplicateOnAFullRedis_Answers503ForItCannotBeConfirmed()
    {
        // A duplicate's WAIT needs a write of its own on the connection (Redis 7.2+ count no other), and a full Redis
        // refuses it: the 200 would then say what nothing checked.
        await using var pair = await ReplicatedRelay.StartAsync("--maxmemory-policy", "noeviction");
        var relay = pair.Relay;
        var body = TestRuns.Body(TestRuns.NewRunId());
        using var accepted = await relay.SendRunAsync(body);
        Assert.Equal(HttpStatusCode.Accepted, accepted.StatusCode);
        await RedisServer.FillAsync(relay.Db);

        using var again = await relay.SendRunAsync(body);

        Assert.Equal(HttpStatusCode.ServiceUnavailable, again.StatusCode);
        var problem = await again.Content.ReadFromJsonAsync<JsonElement>();
        Assert.Equal("replication_unconfirmed", problem.GetProperty("reason").GetString());
        Assert.Contains("refused the write a WAIT needs", problem.GetProperty("detail").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Post_ReplicaPromotedWhileThePrimaryStillAnswers_EveryRunAnsweredAcceptedIsOnTheNewPrimary()
    {
        // An unplanned failover: whatever watches the primary (Sentinel, a managed service) loses sight of it and
        // promotes its replica, while the Ingress still reaches the old primary until that is gone. Without the wait,
        // the runs it answered 202 meanwhile are on the old primary only. (SIGSTOP on the replica would not show this:
        // what the primary had sent sits in the replica's socket buffer and is read when it resumes.)
        await using var pair = await ReplicatedRelay.StartAsync();
        var relay = pair.Relay;

        var inSync = await SendAsync(relay, 20);
        await pair.OnReplica.ExecuteAsync("REPLICAOF", "NO", "ONE");
        var cutOff = await SendAsync(relay, 10);
        pair.Primary.Kill();

        foreach (var (runId, _) in inSync.Concat(cutOff).Where(r => r.Status == HttpStatusCode.Accepted))
        {
            Assert.True(await pair.ReplicaHoldsAsync(runId), $"run {runId} was answered 202 and is not on the new primary");
        }
        Assert.All(inSync, r => Assert.Equal(HttpStatusCode.Accepted, r.Status));
        Assert.All(cutOff, r => Assert.Equal(HttpStatusCode.ServiceUnavailable, r.Status));
    }

    private static async Task<List<(string RunId, HttpStatusCode Status)>> SendAsync(Relay relay, int runs) =>
        [.. await Task.WhenAll(Enumerable.Range(0, runs).Select(async _ =>
        {
            var runId = TestRuns.NewRunId();
            using var response = await relay.SendRunAsync(TestRuns.Body(runId));
            return (runId, response.StatusCode);
        }))];

    /// <summary>A primary and its replica in sync, and the relay (no Dispatcher) on the primary, waiting for one replica.</summary>
    private sealed class ReplicatedRelay(RedisServer primary, RedisServer replica, ConnectionMultiplexer onReplica, Relay relay) : IAsyncDisposable
    {
        public RedisServer Primary { get; } = primary;

        public RedisServer Replica { get; } = replica;

        public Relay Relay { get; } = relay;

        /// <summary>The replica itself, asked directly (not redirected to its primary).</summary>
        public IServer OnReplica => onReplica.GetServer("127.0.0.1", Replica.Port);

        public static async Task<ReplicatedRelay> StartAsync(params string[] primaryArgs)
        {
            var primary = await RedisServer.StartAsync(null, primaryArgs);
            var replica = await RedisServer.StartReplicaOfAsync(primary);
            var onReplica = await ConnectionMultiplexer.ConnectAsync(replica.ConnectionString);
            var relay = await Relay.StartAsync(WaitForOneReplica, dispatchers: 0, redisConnection: primary.ConnectionString);
            return new ReplicatedRelay(primary, replica, onReplica, relay);
        }

        /// <summary>The run's index, record and stream entry, read from the replica.</summary>
        public async Task<bool> ReplicaHoldsAsync(string runId)
        {
            var members = (RedisResult[])(await OnReplica.ExecuteAsync("SMEMBERS", RedisKeys.RunIndex(runId)))!;
            if (members.Length != 1)
            {
                return false;
            }
            var streamId = (string?)await OnReplica.ExecuteAsync("HGET", RedisKeys.Delivery((string)members[0]!), DeliveryRecord.StreamId);
            return streamId is not null && ((RedisResult[])(await OnReplica.ExecuteAsync("XRANGE", RedisKeys.Stream, streamId, streamId))!).Length == 1;
        }

        public async ValueTask DisposeAsync()
        {
            await Relay.DisposeAsync();
            await onReplica.DisposeAsync();
            await Replica.DisposeAsync();
            await Primary.DisposeAsync();
        }
    }
}
