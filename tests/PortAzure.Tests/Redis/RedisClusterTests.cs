using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;
using static PortAzure.Tests.Dispatcher.DeliveryOutcomeTests;

namespace PortAzure.Tests.Redis;

/// <summary>
/// The relay on a Redis Cluster, as on Azure Managed Redis with the OSS clustering policy (deploy.md, section 5): all its
/// keys under one hash tag, in one slot, on the node of three the client routes them to. A script that touched a key of
/// another slot, or named none, would fail here and nowhere else.
/// </summary>
public class RedisClusterTests
{
    [Fact]
    public async Task Relay_RedisCluster_DeliversRetriesDeduplicatesReportsAndReplays()
    {
        await using var cluster = await RedisCluster.StartAsync();
        await using var relay = await StartRelayAsync(cluster);
        // The first POST fails: its run goes through the retry schedule (claimed, begun again, finished).
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 503 } } });
        var runIds = Enumerable.Range(0, 10).Select(_ => TestRuns.NewRunId()).ToList();
        var deliveryIds = new List<string>();

        foreach (var runId in runIds)
        {
            deliveryIds.Add(await SendAsync(relay, runId));
        }
        foreach (var deliveryId in deliveryIds)
        {
            await WaitForStateAsync(relay, deliveryId, DeliveryStates.Delivered);
        }

        var posted = await relay.EmulatorApi.RequestsAsync();
        Assert.Single(posted, r => r.StatusCode == 503);
        Assert.Equal(runIds.Order(), posted.Where(r => r.StatusCode == 200).Select(r => r.Header("X-Port-Run-Id")).Order());
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Where(c => c.StatusCode == 201).Select(c => c.RunId).Distinct().Count() == 10
            && await relay.Db.StreamLengthAsync(RedisKeys.PortReports) == 0,
            TimeSpan.FromSeconds(30), "every run reported to Port, and its report removed");

        // A repeated call is a duplicate; a run is found by its Port run id.
        using (var again = await relay.SendRunAsync(TestRuns.Body(runIds[0])))
        {
            Assert.Equal(HttpStatusCode.OK, again.StatusCode);
        }
        using (var byRun = relay.Operator(HttpMethod.Get, $"/api/deliveries?runId={runIds[0]}"))
        using (var found = await relay.Ingress.Client.SendAsync(byRun))
        {
            Assert.Equal(HttpStatusCode.OK, found.StatusCode);
            Assert.Contains(deliveryIds[0], await found.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }

        // A dead letter is listed, replayed and delivered.
        var deadLetter = "d_" + Guid.NewGuid().ToString("N");
        await DeadLetterRecords.AddAsync(relay.Db, deadLetter, 1, TestRuns.Body(TestRuns.NewRunId()));
        using (var list = relay.Operator(HttpMethod.Get, "/api/deadletters"))
        using (var listed = await relay.Ingress.Client.SendAsync(list))
        {
            Assert.Contains(deadLetter, await listed.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }
        using (var replay = relay.Operator(HttpMethod.Post, $"/api/deadletters/{deadLetter}/replay"))
        using (var replayed = await relay.Ingress.Client.SendAsync(replay))
        {
            Assert.Equal(HttpStatusCode.Accepted, replayed.StatusCode);
        }
        await WaitForStateAsync(relay, deadLetter, DeliveryStates.Delivered);

        // The statistics and both services' health read the relay's node (the memory check asks the primary of its slot).
        using (var stats = relay.Operator(HttpMethod.Get, "/api/stats"))
        using (var answered = await relay.Ingress.Client.SendAsync(stats))
        {
            Assert.Equal(0, (await answered.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("streamLength").GetInt64());
        }
        foreach (var client in new[] { relay.Ingress.Client, relay.Dispatcher.Client })
        {
            using var health = await client.GetAsync(new Uri("/health", UriKind.Relative));
            Assert.Equal("Healthy", await health.Content.ReadAsStringAsync());
        }
        // Every key the relay wrote is on that one node.
        await using var direct = await ConnectionMultiplexer.ConnectAsync(cluster.ConnectionString);
        foreach (var server in direct.GetServers())
        {
            var keys = (long)await server.ExecuteAsync("DBSIZE");
            Assert.True(server.EndPoint is IPEndPoint { Port: var port } && (port == cluster.RelayNodePort) == (keys > 0),
                $"{server.EndPoint} holds {keys} keys; the relay's node is {cluster.RelayNodePort}");
        }
        Assert.DoesNotContain(relay.Dispatcher.Logs.Lines.Concat(relay.Ingress.Logs.Lines),
            l => l.Contains("CROSSSLOT", StringComparison.Ordinal) || l.Contains("MOVED", StringComparison.Ordinal) || l.StartsWith("Error", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Relay_RedisClusterMovesItsSlotUnderLoad_NoRunLostNoneDeliveredTwice()
    {
        // Adding a shard to a cluster moves slots: the relay's one slot, with every key of the relay, may be among them.
        await using var cluster = await RedisCluster.StartAsync();
        await using var relay = await StartRelayAsync(cluster);
        var before = Enumerable.Range(0, 100).Select(_ => TestRuns.NewRunId()).ToList();
        await relay.SendAllAcceptedAsync(before);
        var from = cluster.RelayNodePort;

        var moving = cluster.MoveRelaySlotAsync(batch: 10, pause: TimeSpan.FromMilliseconds(20));
        var (during, refusals) = await SendWhileAsync(relay, moving);
        var moved = await moving;

        await AssertEachDeliveredOnceAndReportedAsync(relay, [.. before, .. during], $"{during.Count} sent while {moved} keys moved, {refusals} refusals");
        Assert.NotEqual(from, cluster.RelayNodePort);
        Assert.True(moved > before.Count, $"{moved} keys moved");
        // The runs met the move: while a slot moves, Redis answers TRYAGAIN to a command naming several keys unless all of
        // them exist on the node asked; the Ingress refuses (503), the Dispatcher tries its step again (2007).
        var tryAgain = relay.Dispatcher.Logs.Lines.Concat(relay.Ingress.Logs.Lines).Count(l => l.Contains("TRYAGAIN", StringComparison.Ordinal));
        Assert.True(refusals + tryAgain > 0, "no call met the move");
    }

    [Fact]
    public async Task Relay_RedisClusterFailsOverUnderLoad_NoRunLostNoneDeliveredTwice()
    {
        // A managed Redis fails its primaries over for maintenance: the relay's node among them.
        await using var cluster = await RedisCluster.StartAsync();
        await cluster.AddReplicaOfRelayNodeAsync();
        // Each run answered only once the relay node's replica holds it: the WAIT goes to that node, before and after.
        await using var relay = await StartRelayAsync(cluster, c =>
        {
            c["Ingress:WaitForReplicas"] = "1";
            c["Ingress:ReplicaWaitMilliseconds"] = "2000";
        });
        var before = Enumerable.Range(0, 50).Select(_ => TestRuns.NewRunId()).ToList();
        await relay.SendAllAcceptedAsync(before);
        var from = cluster.RelayNodePort;

        var (during, refusals) = await SendWhileAsync(relay, cluster.FailOverRelayNodeAsync());
        // Then on the new primary, once the old one follows it as its replica.
        await using (var connection = await ConnectionMultiplexer.ConnectAsync(cluster.ConnectionString))
        {
            await Eventually.HoldsAsync(async () => await RedisServer.InfoFieldAsync(connection, cluster.RelayNodePort, "replication", "connected_slaves") == "1",
                TimeSpan.FromSeconds(20), "the old primary follows the new one");
        }
        var after = Enumerable.Range(0, 20).Select(_ => TestRuns.NewRunId()).ToList();
        await relay.SendAllAcceptedAsync(after);

        await AssertEachDeliveredOnceAndReportedAsync(relay, [.. before, .. during, .. after], $"{during.Count} sent during the failover, {refusals} refusals");
        Assert.NotEqual(from, cluster.RelayNodePort);
    }

    /// <summary>The relay on <paramref name="cluster"/>, reporting to Port, its retries due soon.</summary>
    private static Task<Relay> StartRelayAsync(RedisCluster cluster, Action<Dictionary<string, string?>>? configure = null) => Relay.StartAsync(c =>
    {
        c["Port:ClientId"] = "relay-client";
        c["Dispatcher:Retry:InitialDelaySeconds"] = "0.2";
        configure?.Invoke(c);
    }, redisConnection: cluster.ConnectionString);

    /// <summary>
    /// Runs sent one after another while <paramref name="work"/> goes on, and at least 20: each until the relay takes it
    /// (202, or 200 if an earlier try was queued after all). A refusal (503) wrote nothing, so the same call is sent
    /// again: a retrying client's part (Port does not document retrying a 503).
    /// </summary>
    private static async Task<(List<string> Sent, int Refusals)> SendWhileAsync(Relay relay, Task work)
    {
        var sent = new List<string>();
        var refusals = 0;
        while (!work.IsCompleted || sent.Count < 20)
        {
            var runId = TestRuns.NewRunId();
            while (true)
            {
                using var response = await relay.SendRunAsync(TestRuns.Body(runId));
                if (response.StatusCode is HttpStatusCode.Accepted or HttpStatusCode.OK)
                {
                    break;
                }
                Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
                refusals++;
                await Task.Delay(50);
            }
            sent.Add(runId);
        }
        await work;
        return (sent, refusals);
    }

    private static async Task AssertEachDeliveredOnceAndReportedAsync(Relay relay, List<string> runs, string context)
    {
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count(r => r.StatusCode == 200) >= runs.Count
            && await relay.Db.StreamLengthAsync(RedisKeys.Stream) == 0,
            TimeSpan.FromSeconds(60), () => $"all {runs.Count} runs delivered ({context})");
        var delivered = (await relay.EmulatorApi.RequestsAsync()).Where(r => r.StatusCode == 200).Select(r => r.Header("X-Port-Run-Id")).ToList();
        Assert.Equal(runs.Order(), delivered.Order());
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.PortCallsAsync()).Where(c => c.StatusCode == 201).Select(c => c.RunId).Distinct().Count() == runs.Count,
            TimeSpan.FromSeconds(60), "every run reported to Port");
    }
}
