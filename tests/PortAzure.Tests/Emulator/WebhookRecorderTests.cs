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
}
