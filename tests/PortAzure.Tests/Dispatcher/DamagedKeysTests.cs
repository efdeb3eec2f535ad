using System.Net.Http.Json;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using Xunit.Abstractions;

namespace PortAzure.Tests.Dispatcher;

/// <summary>The relay's shared keys beside the runs, each of another type (damaged, or overwritten by something else).</summary>
[Collection(HeavyTests.Name)]
public class DamagedKeysTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Deliver_SharedKeysBesideTheRunsDamaged_NoRunPostedAgainAfterA2xxAndEveryOneRecordedDelivered()
    {
        // A finish that failed on one of them left its entry pending, and a run Azure had accepted was posted again at each
        // reclaim (the retry claims: four POSTs of each run in 20 s); a due retry's claim failed, and every read with it.
        // The schedule is not among them: its claim fails the read loop before any read, so nothing is posted at all (no run
        // is lost: they wait in the stream).
        await using var relay = await Relay.StartAsync(c =>
        {
            // Lease 2 + 1 + 0.5 s, reclaim after 3 s idle: a run whose finish failed is posted again within seconds.
            c["Dispatcher:RequestTimeoutSeconds"] = "2";
            c["Dispatcher:FinishRetrySeconds"] = "1";
            c["Dispatcher:ClaimMarginSeconds"] = "1";
            c["Dispatcher:ClaimIntervalSeconds"] = "0.5";
            // Reporting on: each outcome writes a report to Port's (damaged) stream.
            c["Port:ClientId"] = "relay-client";
        }, dispatchers: 0);
        foreach (var key in new[] { RedisKeys.RetryClaims, RedisKeys.TargetFailures, RedisKeys.PausedTargets, RedisKeys.DeadLetters, RedisKeys.PortReports })
        {
            await relay.Db.StringSetAsync(key, "damaged");
        }
        // The first POST is answered 503: that run goes through the schedule, whose claims are counted in a damaged key.
        await relay.EmulatorApi.ScriptAsync(new { responses = new[] { new { status = 503 } } });
        var dispatcher = await relay.AddDispatcherAsync();
        var runIds = Enumerable.Range(0, 5).Select(_ => TestRuns.NewRunId()).ToList();
        await relay.SendAllAcceptedAsync(runIds);

        async Task<bool> AllDeliveredAsync()
        {
            foreach (var runId in runIds)
            {
                var deliveryId = (string?)(await relay.Db.SetMembersAsync(RedisKeys.RunIndex(runId))).Single();
                if ((string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId!), DeliveryRecord.State) != DeliveryStates.Delivered)
                {
                    return false;
                }
            }
            return true;
        }
        await Eventually.HoldsAsync(AllDeliveredAsync, TimeSpan.FromSeconds(30), "every run recorded delivered");
        // Longer than a lease and a reclaim: a run left pending would have been posted again by now.
        await Task.Delay(TimeSpan.FromSeconds(6));

        var requests = await relay.EmulatorApi.RequestsAsync();
        output.WriteLine(string.Join("\n", dispatcher.Logs.Lines.Where(l => l.Contains("fail:", StringComparison.Ordinal)).Take(20)));
        var posts = requests.GroupBy(r => r.Header("X-Port-Run-Id")!).ToDictionary(g => g.Key, g => g.Count());
        Assert.Equal(runIds.Order(), posts.Keys.Order());
        Assert.Equal([1, 1, 1, 1, 2], posts.Values.Order());
        Assert.Equal(0, await relay.Db.StreamLengthAsync(RedisKeys.Stream));
        Assert.Equal(0, await relay.Db.SortedSetLengthAsync(RedisKeys.RetrySchedule));
        // The reports could not be queued (the Port reports' stream is damaged too): the operator API says so.
        var anyDelivery = (string?)(await relay.Db.SetMembersAsync(RedisKeys.RunIndex(runIds[0]))).Single();
        using var request = relay.Operator(HttpMethod.Get, $"/api/deliveries/{anyDelivery}");
        // To the Dispatcher itself: started after the Ingress, it is not the one the Ingress proxies to.
        using var response = await dispatcher.Client.SendAsync(request);
        var view = await response.Content.ReadFromJsonAsync<System.Text.Json.JsonElement>();
        Assert.Equal("not_queued", view.GetProperty("portReport").GetProperty("state").GetString());
    }
}
