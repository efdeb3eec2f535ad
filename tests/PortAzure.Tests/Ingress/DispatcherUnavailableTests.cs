using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Ingress;

public class DispatcherUnavailableTests
{
    [Theory]
    [InlineData("GET", "/api/stats")]
    [InlineData("POST", "/api/deadletters/d_0123456789abcdef0123456789abcdef/replay")]
    public async Task Call_DispatcherStopped_Answers503DispatcherUnavailableWithRetryAfter(string method, string path)
    {
        await using var relay = await Relay.StartAsync();
        await relay.StopDispatcherAsync(relay.Dispatcher);

        using var request = relay.Operator(new HttpMethod(method), path);
        using var response = await relay.Ingress.Client.SendAsync(request);

        Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        Assert.NotNull(response.Headers.RetryAfter);
        Assert.Equal("dispatcher_unavailable", (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("reason").GetString());
    }
}
