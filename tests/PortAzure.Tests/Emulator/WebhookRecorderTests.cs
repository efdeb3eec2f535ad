using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Emulator;

public class WebhookRecorderTests
{
    [Fact]
    public async Task Take_RecordedRequests_ReturnsThemInOrderAndLeavesNone()
    {
        // The benchmark's check takes the records; one read and then cleared could drop a request that arrived between.
        await using var emulator = await TestHost.StartEmulatorAsync();
        for (var i = 0; i < 3; i++)
        {
            using var content = new StringContent($$"""{"n":{{i}}}""", Encoding.UTF8, "application/json");
            using var posted = await emulator.Client.PostAsync(new Uri($"contoso/_apis/public/distributedtask/webhooks/deploy?api-version=6.0-preview", UriKind.Relative), content);
        }

        using var first = await emulator.Client.PostAsync(new Uri("_emulator/requests/take", UriKind.Relative), null);
        using var second = await emulator.Client.PostAsync(new Uri("_emulator/requests/take", UriKind.Relative), null);

        var taken = (await first.Content.ReadFromJsonAsync<JsonElement>()).EnumerateArray().Select(r => r.GetProperty("sequence").GetInt64()).ToList();
        Assert.Equal(3, taken.Count);
        Assert.Equal(taken.Order(), taken);
        Assert.Empty((await second.Content.ReadFromJsonAsync<JsonElement>()).EnumerateArray());
        Assert.Empty(await new EmulatorClient(emulator.Client).RequestsAsync());
    }

    [Fact]
    public async Task TakePortCalls_RecordedCalls_ReturnsThemInOrderAndLeavesNone()
    {
        // The crash soak takes Port's calls as it takes the webhook requests, every few seconds, over 100,000 runs.
        await using var emulator = await TestHost.StartEmulatorAsync();
        for (var i = 0; i < 3; i++)
        {
            using var login = await emulator.Client.PostAsJsonAsync(new Uri("v1/auth/access_token", UriKind.Relative), new { clientId = "id", clientSecret = "secret" });
        }

        using var first = await emulator.Client.PostAsync(new Uri("_emulator/port/calls/take", UriKind.Relative), null);
        using var second = await emulator.Client.PostAsync(new Uri("_emulator/port/calls/take", UriKind.Relative), null);

        var taken = (await first.Content.ReadFromJsonAsync<JsonElement>()).EnumerateArray().Select(c => c.GetProperty("sequence").GetInt64()).ToList();
        Assert.Equal(3, taken.Count);
        Assert.Equal(taken.Order(), taken);
        Assert.Empty((await second.Content.ReadFromJsonAsync<JsonElement>()).EnumerateArray());
        Assert.Empty(await new EmulatorClient(emulator.Client).PortCallsAsync());
    }

    [Fact]
    public async Task Add_PastMaxRecorded_KeepsTheNewestAndCountsTheDropped()
    {
        // A long local session (./run.sh) kept every request and its body for good.
        await using var emulator = await TestHost.StartEmulatorAsync(new Dictionary<string, string?> { ["Emulator:MaxRecorded"] = "3" });
        for (var i = 0; i < 5; i++)
        {
            using var content = new StringContent($$"""{"n":{{i}}}""", Encoding.UTF8, "application/json");
            using var posted = await emulator.Client.PostAsync(new Uri("contoso/_apis/public/distributedtask/webhooks/deploy?api-version=6.0-preview", UriKind.Relative), content);
            using var login = await emulator.Client.PostAsJsonAsync(new Uri("v1/auth/access_token", UriKind.Relative), new { clientId = "id", clientSecret = "secret" });
        }

        var kept = await new EmulatorClient(emulator.Client).RequestsAsync();
        var count = await emulator.Client.GetFromJsonAsync<JsonElement>(new Uri("_emulator/requests/count", UriKind.Relative));

        Assert.Equal(["""{"n":2}""", """{"n":3}""", """{"n":4}"""], kept.Select(r => r.BodyText));
        Assert.Equal((3, 2), (count.GetProperty("count").GetInt32(), count.GetProperty("dropped").GetInt32()));
        Assert.Equal(3, (await new EmulatorClient(emulator.Client).PortCallsAsync()).Count);
    }

    [Fact]
    public async Task Start_NegativeMaxRecorded_FailsNamingTheKey()
    {
        var error = await Assert.ThrowsAnyAsync<Exception>(() => TestHost.StartEmulatorAsync(new Dictionary<string, string?> { ["Emulator:MaxRecorded"] = "-1" }));
        Assert.Contains("Emulator:MaxRecorded", error.ToString(), StringComparison.Ordinal);
    }
}
