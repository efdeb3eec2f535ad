using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Dispatcher;

/// <summary>A thousand runs through the relay: alone, so that they do not starve the small timing-bound tests.</summary>
[Collection(HeavyTests.Name)]
public class LoadTests
{
    [Fact]
    public async Task Load_ThirtyPercent503Or429AcrossAThousandRuns_AllDeliveredNoneTwice()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Dispatcher:MaxConcurrency"] = "32";
            c["Dispatcher:Retry:InitialDelaySeconds"] = "0.05";
            c["Dispatcher:Retry:MaxDelaySeconds"] = "0.5";
            c["Dispatcher:Retry:MaxAttempts"] = "30";
        });
        await relay.EmulatorApi.ScriptAsync(new { failureRate = 0.3, failureStatuses = new[] { 503, 429 }, retryAfter = "0", seed = 7 });
        var runIds = Enumerable.Range(0, 1000).Select(_ => TestRuns.NewRunId()).ToList();

        await relay.SendAllAcceptedAsync(runIds);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.DeliveredAsync()).Count >= 1000, TimeSpan.FromSeconds(120), "1,000 runs delivered");
        await Task.Delay(1000);

        var all = await relay.EmulatorApi.RequestsAsync();
        var delivered = await relay.EmulatorApi.DeliveredAsync();
        Assert.True(all.Count(r => r.StatusCode is 503 or 429) > 200, "the emulator failed about 30 % of the calls");
        Assert.Equal(1000, delivered.Count);
        Assert.Equal(runIds.Order(), delivered.Select(r => r.Header("X-Port-Run-Id")!).Order());
        Assert.Equal(0, await relay.Db.SortedSetLengthAsync(RedisKeys.DeadLetters));
    }
}
